"""Reading JSON files with the project's one-line errors (strict JSON: no NaN or Infinity)."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.errors import fail


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str):
    """``json.loads`` without Python's NaN/Infinity extension."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path: Path | str, missing_ok: bool = False, root: Path | None = None) -> dict | None:
    """The JSON object in ``path``; None if it is absent and ``missing_ok``.

    With ``root``, ``path`` must be a regular file inside it (see support/paths.py)."""
    from mcpm_mobile.support.paths import regular_file

    path = Path(path)
    present = regular_file(root, path) if root is not None else path.is_file()
    if not present:
        if missing_ok:
            return None
        raise fail(path, "not found")
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(path, f"cannot read JSON: {e}")
    if not isinstance(data, dict):
        raise fail(path, "expected a JSON object")
    return data
