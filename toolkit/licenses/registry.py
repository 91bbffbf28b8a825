"""Licence terms per model family (data/licenses.json) and detecting the family of a checkpoint.

A family's terms are a plain dict: the entry of licenses.json plus ``family``, ``registry_version`` and
``code_license_terms``. Detection never guesses: when the signals are missing or disagree the answer is None.
"""
from __future__ import annotations

import copy
import functools
import json
import re
from importlib import resources
from pathlib import Path

from mcpm_mobile.errors import MCPMError
from mcpm_mobile.support.jsonio import read_json

UNKNOWN = "unknown"
UNKNOWN_STATUS = "The model's licence is not known to mcpm-mobile; find out its terms before distributing it."


@functools.cache
def _data() -> dict:
    text = resources.files("mcpm_mobile.licenses.data").joinpath("licenses.json").read_text(encoding="utf-8")
    return json.loads(text)


def load() -> dict:
    """The whole registry (version, statuses, sources, code licences, families); a copy the caller may change."""
    return copy.deepcopy(_data())


def families() -> list[str]:
    return sorted(_data()["families"])


def status_text(status: str) -> str:
    return _data()["statuses"].get(status, UNKNOWN_STATUS)


def family_terms(family: str) -> dict:
    """Terms of a registry key such as ``"minicpm"``."""
    data = _data()
    terms = copy.deepcopy(data["families"][family])
    terms["family"] = family
    terms["registry_version"] = data["version"]
    terms["code_license_terms"] = copy.deepcopy(data["code_licenses"].get(terms["code_license"]))
    return terms


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def lookup(name: str) -> dict | None:
    """Terms of the family called ``name`` (key or alias; case and punctuation ignored), or None."""
    wanted = _key(name)
    for family, entry in _data()["families"].items():
        if wanted in {_key(family), *map(_key, entry["aliases"])}:
            return family_terms(family)
    return None


def unknown_terms(reason: str = "") -> dict:
    """Terms for a model whose family is unknown: same keys as a family, nothing assumed."""
    return {
        "family": UNKNOWN, "registry_version": _data()["version"], "name": "Unknown model family", "aliases": [],
        "source": None, "source_section": None, "licensor": None, "license": "unknown", "license_url": None,
        "code_license": None, "code_license_terms": None, "research": None, "grant": None,
        "commercial": {
            "status": UNKNOWN,
            "summary": f"The licence could not be determined{': ' + reason if reason else ''}.",
            "threshold": None, "conditions": [],
            "steps": ["Read the licence on the model card and follow its terms.",
                      "If the model belongs to a family mcpm-mobile knows, pass --model-family with one of: "
                      + ", ".join(families()) + "."],
            "contact": None,
        },
        "attribution": [], "labels": [], "labelling_duty": None, "hand_users": [], "distribution_duty": None,
        "trademarks": None, "forbidden_uses": [], "termination": None, "governing_law": None, "venue": None,
        "notes": [], "detect": {"architectures": [], "model_types": [], "names": [], "shared": []},
    }


def _signals(config: dict, name_hint: str | None) -> tuple[set[str], str, list[str]]:
    archs = {a for a in config.get("architectures") or [] if isinstance(a, str)}
    model_type = config.get("model_type")
    model_type = model_type.lower() if isinstance(model_type, str) else ""
    names = [n.lower() for n in (config.get("_name_or_path"), name_hint) if isinstance(n, str) and n]
    return archs, model_type, names


def detect_with_reason(config: dict, name_hint: str | None = None) -> tuple[str | None, str]:
    """(family or None, why) from a config.json dict and a name such as the checkpoint directory's."""
    archs, model_type, names = _signals(config, name_hint)
    by_config, by_name, shared_by = set(), set(), set()
    for family, entry in _data()["families"].items():
        rules = entry["detect"]
        if archs & set(rules["architectures"]) or model_type in rules["model_types"]:
            by_config.add(family)
        if any(re.search(pattern, name) for pattern in rules["names"] for name in names):
            by_name.add(family)
        if archs & set(rules["shared"]) or model_type in rules["shared"]:
            shared_by.add(family)
    seen = f"architectures={sorted(archs)}, model_type={model_type or None!r}, names={names}"

    if len(by_config) > 1:
        return None, f"config.json matches several families ({', '.join(sorted(by_config))}): {seen}"
    if by_config:
        family = next(iter(by_config))
        # A name pointing at another family contradicts the config: refuse rather than pick one.
        if by_name and family not in by_name:
            return None, f"config.json says {family} but the name says {', '.join(sorted(by_name))}: {seen}"
        return family, f"config.json ({seen})"
    if len(by_name) > 1:
        return None, f"the name matches several families ({', '.join(sorted(by_name))}): {seen}"
    if by_name:
        family = next(iter(by_name))
        # The name is trusted only over an architecture that family is known to use (or no config at all).
        if not (archs or model_type) or family in shared_by:
            return family, f"name ({seen})"
        return None, f"the name says {family} but config.json names an architecture it does not use: {seen}"
    if shared_by:
        return None, (f"this architecture is shared by releases with different licences "
                      f"(e.g. {', '.join(sorted(shared_by))}) and the name does not say which: {seen}")
    return None, f"no licence record matches: {seen}"


def detect(config: dict, name_hint: str | None = None) -> str | None:
    """The family of a checkpoint from its config.json dict and name, or None when not certain."""
    return detect_with_reason(config, name_hint)[0]


def read_config(model_dir: Path | str) -> dict:
    """config.json of a checkpoint directory as a dict; {} when there is none."""
    return read_json(Path(model_dir) / "config.json", missing_ok=True, root=Path(model_dir)) or {}


def detect_dir(model_dir: Path | str) -> str | None:
    """The family of a checkpoint directory (config.json and the directory name), or None."""
    return detect(read_config(model_dir), Path(model_dir).resolve().name)


def resolve(model_dir: Path | str | None = None, family: str | None = None, name_hint: str | None = None) -> dict:
    """Terms for a build: ``family`` (e.g. --model-family) wins, else detected from ``model_dir`` (its config,
    its name or ``name_hint`` such as a Hub repo id, and the licence its model card declares).

    An unknown ``family`` name is an error (exit 2); an undetectable checkpoint gives ``unknown_terms``.
    """
    from mcpm_mobile.licenses import declared

    if family:
        terms = lookup(family)
        if terms is None:
            raise MCPMError(f"unknown model family '{family}'; known families: {', '.join(families())} "
                            "(check the licence on the model card)")
        terms["detected_from"] = "--model-family"
        return terms
    if model_dir is None:
        raise MCPMError("give a checkpoint directory or a model family")
    config = read_config(model_dir)
    from mcpm_mobile.model.hub import repo_id_of

    name = name_hint or repo_id_of(model_dir) or Path(model_dir).resolve().name
    found, reason = detect_with_reason(config, name)
    declaration = declared.read(Path(model_dir))
    names = [name, str(config.get("_name_or_path") or "")]
    if found in (None, "minicpm") and declared.is_minicpm4(config, names, declaration):
        found, reason = "minicpm4", f"MiniCPM4/4.1 by name or declared licence and vocabulary ({name})"
    terms = family_terms(found) if found else unknown_terms(reason)
    terms["detected_from"] = reason
    return declared.reconcile(terms, declaration)
