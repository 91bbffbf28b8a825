"""Reading JSON files with the project's one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.errors import fail


def read_json(path: Path | str, missing_ok: bool = False, not_found: str = "not found") -> dict | None:
    """The JSON object in ``path``; None if it is absent and ``missing_ok``, else ``not_found`` is the error."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise fail(path, not_found)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise fail(path, f"cannot read JSON: {e}")
    if not isinstance(data, dict):
        raise fail(path, "expected a JSON object")
    return data
