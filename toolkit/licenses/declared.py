"""The licence a checkpoint declares itself: its model card's front matter and any LICENSE file.

Hugging Face model cards (README.md) start with YAML front matter; ``license`` holds an SPDX-like id
(``apache-2.0``) or ``other`` with ``license_name``/``license_link``. The registry stays the authority for
what the terms say; the declaration tells MiniCPM4/4.1 (Apache-2.0) from MiniCPM 1.x (GML), which share an
architecture, and any disagreement between the two is reported with the terms that were applied.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mcpm_mobile.support.paths import regular_file

CARD = "README.md"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")
MINICPM4_VOCAB = 73448  # MiniCPM4/4.1 (config.json); MiniCPM 1.x uses 122753, 127660 or 73440
_MINICPM4_NAME = re.compile(r"minicpm-?4(\.\d+)?(?![0-9])", re.I)
_ALIASES = {"apache-2.0": "apache-2.0", "apache2.0": "apache-2.0", "apachelicense2.0": "apache-2.0",
            "apachelicenseversion2.0": "apache-2.0"}


@dataclass(frozen=True)
class Declaration:
    license: str | None  # front matter ``license`` as written
    license_name: str | None
    license_link: str | None
    license_file: str | None  # name of a LICENSE file in the checkpoint, if any
    license_file_kind: str | None  # "apache-2.0" when the file is the Apache License 2.0 text

    @property
    def spdx(self) -> str | None:
        """The declared licence as a normalised id (apache-2.0, other:<name>, ...), or None."""
        if self.license and self.license.lower() != "other":
            return normalise(self.license)
        if self.license_name:
            return f"other:{self.license_name.lower()}"
        return self.license_file_kind

    def to_dict(self) -> dict:
        return {**asdict(self), "normalised": self.spdx}


def normalise(name: str) -> str:
    key = re.sub(r"[\s_]+", "", name.lower())
    return _ALIASES.get(key, name.strip().lower())


def front_matter(text: str) -> dict[str, str]:
    """Top-level scalar keys of a YAML front matter block (lists and nested maps are skipped)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return out
        m = re.match(r"^([A-Za-z_][\w-]*):\s*(.*?)\s*$", line)
        if m and m.group(2) and not m.group(2).startswith(("[", "{", "|", ">")):
            out[m.group(1)] = m.group(2).strip("'\"")
    return {}  # no closing marker: not front matter


def read(model_dir: Path) -> Declaration | None:
    """What ``model_dir`` declares, or None when it has no model card front matter and no LICENSE file."""
    model_dir = Path(model_dir)
    meta = {}
    card = model_dir / CARD
    if regular_file(model_dir, card):
        try:
            meta = front_matter(card.read_text(encoding="utf-8", errors="replace")[:65536])
        except OSError:
            meta = {}
    lic_file = next((model_dir / n for n in LICENSE_FILES if regular_file(model_dir, model_dir / n)), None)
    kind = None
    if lic_file is not None:
        try:
            head = lic_file.read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError:
            head = ""
        if "Apache License" in head and "Version 2.0" in head:
            kind = "apache-2.0"
    if not meta.get("license") and not meta.get("license_name") and lic_file is None:
        return None
    return Declaration(meta.get("license"), meta.get("license_name"), meta.get("license_link"),
                       lic_file.name if lic_file else None, kind)


def is_minicpm4(config: dict, names: list[str], declaration: Declaration | None) -> bool:
    """A MiniCPMForCausalLM checkpoint of the MiniCPM4/4.1 releases: by name, or by its declared Apache-2.0
    licence together with MiniCPM4's vocabulary."""
    if "MiniCPMForCausalLM" not in (config.get("architectures") or []):
        return False
    if any(_MINICPM4_NAME.search(n) for n in names if n):
        return True
    return (declaration is not None and declaration.spdx == "apache-2.0"
            and config.get("vocab_size") == MINICPM4_VOCAB)


def reconcile(terms: dict, declaration: Declaration | None) -> dict:
    """Record the declaration in ``terms`` and, when it disagrees with the registry, say so and which terms apply."""
    if declaration is None or terms.get("license") in (None, "unknown"):
        return terms
    terms["declared"] = declaration.to_dict()
    declared = declaration.spdx
    registry = normalise(terms["license"])
    if declared is None or declared == registry:
        return terms
    shown = declaration.license if declared and not declared.startswith("other:") else declaration.license_name
    where = f"{CARD} front matter" if declaration.license or declaration.license_name else declaration.license_file
    note = (f"The checkpoint declares '{shown}' ({where}) but mcpm-mobile's licence registry gives "
            f"{terms['name']} the {terms['license']}; the registry's terms were applied (to --commercial too), "
            "because they are the terms OpenBMB published for these weights and the stricter reading. "
            "If the declaration is what binds you, check it with the licensor and pass --model-family "
            "to use other terms.")
    terms["declaration_conflict"] = note
    terms["notes"] = [*terms.get("notes", []), note]
    return terms
