"""What a build ships about the model's licence: NOTICE.md, license.json, the manifest record and the commercial gate."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.licenses.registry import UNKNOWN, status_text
from mcpm_mobile.support.paths import regular_file

NOTICE = "NOTICE.md"
LICENSE_JSON = "license.json"
AGREEMENTS = "licenses"  # folder for the licence files copied from the checkpoint
GATE_EXIT = 3

_AGREEMENT_NAME = re.compile(r"licen[cs]e|agreement|协议|notice", re.IGNORECASE)
_AGREEMENT_SUFFIXES = {"", ".txt", ".md", ".pdf"}
# How to finish the sentence "commercial use of <model> ..." for each status that needs a grant.
_NEEDS = {
    "registration": "needs registration with the licensor",
    "authorization": "needs authorization from the licensor",
    "unstated": "has terms our source documents do not state: clear them first",
    UNKNOWN: "cannot be checked: the model's licence is unknown",
}


def grant_info(grant_file: Path | str | None) -> dict:
    """File name and SHA-256 of the authorization document (None values without one)."""
    if grant_file is None:
        return {"grant_file": None, "grant_sha256": None}
    path = Path(grant_file)
    if not path.is_file():
        raise fail(path, "licence grant file not found")
    data = path.read_bytes()
    if not data:
        raise fail(path, "licence grant file is empty")
    return {"grant_file": path.name, "grant_sha256": hashlib.sha256(data).hexdigest()}


def license_record(terms: dict, grant_file: Path | str | None = None, commercial_use: bool = False) -> dict:
    """The ``license`` entry of a package's manifest.json."""
    return {
        "family": terms["family"],
        "license": terms["license"],
        "code_license": terms["code_license"],
        "commercial": terms["commercial"]["status"],
        "commercial_use": commercial_use,
        **grant_info(grant_file),
        "source": terms["source"],
        "registry_version": terms["registry_version"],
        **({"declared": terms["declared"]} if terms.get("declared") else {}),
        **({"declaration_conflict": terms["declaration_conflict"]} if terms.get("declaration_conflict") else {}),
    }


def _gate_message(terms: dict) -> str:
    commercial = terms["commercial"]
    steps = " ".join(f"{i}) {step}" for i, step in enumerate(commercial["steps"], 1))
    contact = f" Contact: {commercial['contact']}." if commercial["contact"] else ""
    known = terms["family"] != UNKNOWN
    subject = terms["name"] if known else "this model"
    details = f" Details: mcpm-mobile license {terms['family']}" if known else ""
    return (f"commercial use of {subject} {_NEEDS[commercial['status']]} (licence: {terms['license']}).{contact} "
            f"Steps: {steps} Then build again with --commercial --license-grant FILE, FILE being the document that "
            f"permits commercial use; its SHA-256 is recorded in the manifest.{details}"
            + (f" {terms['declaration_conflict']}" if terms.get("declaration_conflict") else ""))


def check_commercial(terms: dict, grant_file: Path | str | None = None) -> dict:
    """Gate for ``build --commercial``: the manifest record, or MCPMError with exit code 3.

    Prohibited commercial use fails even with a grant file: no document on our side can change the licence.
    """
    status = terms["commercial"]["status"]
    if status == "prohibited":
        raise MCPMError(f"commercial use of {terms['name']} is prohibited by its licence ({terms['license']}): "
                        f"{terms['commercial']['summary']} A grant file cannot lift this; build without --commercial "
                        f"for non-commercial use.", exit_code=GATE_EXIT)
    if status != "allowed" and grant_file is None:
        raise MCPMError(_gate_message(terms), exit_code=GATE_EXIT)
    return license_record(terms, grant_file, commercial_use=True)


def before_shipping(terms: dict, record: dict | None = None) -> list[str]:
    """What the user must do before distributing the model, in order."""
    commercial = terms["commercial"]
    status = commercial["status"]
    todo = [f"Keep {NOTICE} and {LICENSE_JSON} with the app you distribute."]
    if status == "prohibited":
        todo.append(f"Do not use the model commercially: {commercial['summary']}")
    todo += [f"Commercial condition: {c}" for c in commercial["conditions"]]
    if status not in ("allowed", "prohibited"):
        if record and record.get("grant_sha256"):
            todo.append(f"Commercial use: authorization recorded ({record['grant_file']}, "
                        f"sha256 {record['grant_sha256']}); keep the original document.")
        else:
            todo += [f"Before any commercial use: {step}" for step in commercial["steps"]]
    if terms["distribution_duty"]:
        todo.append(terms["distribution_duty"])
    todo += terms["attribution"]
    if terms["labelling_duty"]:
        todo.append(terms["labelling_duty"])
    code = terms["code_license_terms"]
    if code:
        todo += [f"Code under {terms['code_license']}: {duty}" for duty in code["duties"]]
    if terms["forbidden_uses"]:
        todo.append("Make sure the app is not used for the forbidden uses listed in the notice.")
    return todo


def _bullets(items) -> list[str]:
    return [f"- {item}" for item in items]


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", f"## {title}", "", *lines] if lines else []


def render_markdown(terms: dict, record: dict | None = None, agreement_files: list[str] = ()) -> str:
    """NOTICE.md for ``terms`` (also the text output of ``mcpm-mobile license``)."""
    commercial = terms["commercial"]
    out = [f"# Model licence: {terms['name']}", ""]
    if terms["family"] == UNKNOWN:
        out.append("mcpm-mobile has no licence record for this model and does not guess one.")
    else:
        out.append(f"A summary of the licence terms from the mcpm-mobile licence registry (version "
                   f"{terms['registry_version']}, source document {terms['source']}). It is not legal advice: "
                   f"the licence text itself is authoritative.")
    out.append("")
    facts = [("Family", f"`{terms['family']}`"),
             ("Licence", terms["license"] + (f" <{terms['license_url']}>" if terms["license_url"] else "")),
             ("Licensor", terms["licensor"]), ("Code licence", terms["code_license"]),
             ("Research use", terms["research"]), ("Grant", terms["grant"]),
             ("Detected from", terms.get("detected_from"))]
    out += [f"- {label}: {value}" for label, value in facts if value]

    lines = [f"Status: **{commercial['status']}**. {status_text(commercial['status'])}", "", commercial["summary"]]
    if commercial["threshold"]:
        t = commercial["threshold"]
        lines += ["", f"- Threshold: {t['limit']:,} {t['metric']}; beyond it: {t['beyond']}."]
    if commercial["conditions"]:
        lines += ["", *_bullets(f"Condition: {c}" for c in commercial["conditions"])]
    if commercial["steps"] and commercial["status"] != "allowed":
        lines += ["", "What to do:", ""] + [f"{i}. {s}" for i, s in enumerate(commercial["steps"], 1)]
    if commercial["contact"]:
        lines += ["", f"Contact: {commercial['contact']}"]
    if record:
        lines += ["", f"Commercial use declared for this build: {'yes' if record['commercial_use'] else 'no'}."]
        if record["grant_sha256"]:
            lines += [f"Authorization document recorded: {record['grant_file']} (sha256 {record['grant_sha256']})."]
    out += _section("Commercial use", lines)

    out += _section("Before you ship", _bullets(before_shipping(terms, record)))
    out += _section("Forbidden uses", _bullets(terms["forbidden_uses"]))
    out += _section("Required labels", _bullets(f"\"{label}\"" for label in terms["labels"]))
    out += _section("Trademarks", [terms["trademarks"]] if terms["trademarks"] else [])
    law = [("Governing law", terms["governing_law"]), ("Venue", terms["venue"])]
    out += _section("Governing law and venue", [f"- {label}: {value}" for label, value in law if value])
    out += _section("Term and termination", [terms["termination"]] if terms["termination"] else [])
    code = terms["code_license_terms"]
    if code:
        out += _section(f"Code licence: {terms['code_license']}",
                        [code["summary"], ""] + _bullets(code["notes"]))
    out += _section("Notes", _bullets(terms["notes"]))
    out += _section("Licence files included", _bullets(f"`{name}`" for name in agreement_files))
    return "\n".join(out) + "\n"


def _copy_agreements(model_dir: Path, dest: Path) -> list[Path]:
    """Copy licence files found at the top of the checkpoint into ``dest/licenses/``."""
    found = sorted(p for p in Path(model_dir).iterdir()
                   if _AGREEMENT_NAME.search(p.stem) and p.suffix.lower() in _AGREEMENT_SUFFIXES
                   and regular_file(model_dir, p))
    copied = []
    for src in found:
        target = dest / AGREEMENTS / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        copied.append(target)
    return copied


def write_notices(dest_dir: Path | str, terms: dict, grant: Path | str | None = None, commercial_use: bool = False,
                  model_dir: Path | str | None = None) -> list[Path]:
    """Write NOTICE.md and license.json into ``dest_dir`` and return the paths written.

    ``grant`` is the authorization document (its SHA-256 is recorded). With ``model_dir``, the checkpoint's own
    licence files (LICENSE, MODEL_LICENSE, agreement PDFs) are copied too, since some licences require handing
    users a copy of the agreement.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    record = license_record(terms, grant, commercial_use)
    copied = _copy_agreements(Path(model_dir), dest) if model_dir else []
    names = [p.relative_to(dest).as_posix() for p in copied]
    if terms["hand_users"] and not copied:
        terms = {**terms, "notes": terms["notes"] + [
            "No licence file was found in the checkpoint: add a copy of the licence agreement to the app yourself."]}
    notice = dest / NOTICE
    notice.write_text(render_markdown(terms, record, names), encoding="utf-8")
    info = {**record, "before_shipping": before_shipping(terms, record), "agreement_files": names, "terms": terms}
    license_json = dest / LICENSE_JSON
    license_json.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [notice, license_json, *copied]


def short_notice(terms: dict, record: dict | None = None) -> str:
    """Two or three lines for the end of a build."""
    commercial = terms["commercial"]
    status = commercial["status"]
    if terms["family"] == UNKNOWN:
        return ("Licence: unknown model family; mcpm-mobile does not guess. Check the licence on the model card "
                "before distributing, or pass --model-family.\n"
                f"{NOTICE} and {LICENSE_JSON} in the package say so.")
    code = f"; code {terms['code_license']}" if terms["code_license"] not in (None, terms["license"]) else ""
    first = f"Licence: {terms['name']}: {terms['license']}{code}."
    if status == "allowed":
        second = "Commercial use: allowed; the licence's duties are listed in NOTICE.md."
    elif status == "prohibited":
        second = "Commercial use: prohibited."
    elif record and record.get("grant_sha256"):
        second = f"Commercial use: authorization recorded (sha256 {record['grant_sha256'][:12]}...)."
    else:
        contact = f" ({commercial['contact']})" if commercial["contact"] else ""
        second = f"Commercial use: {_NEEDS[status]}{contact}."
    third = f"Terms and duties: {NOTICE} in the package; mcpm-mobile license {terms['family']}"
    conflict = [terms["declaration_conflict"]] if terms.get("declaration_conflict") else []
    return "\n".join([first, second, third, *conflict])
