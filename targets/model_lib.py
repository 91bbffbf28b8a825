"""Model library naming and the ``_metadata`` JSON embedded in a compiled library."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
from pathlib import Path

from mcpm_mobile.errors import fail

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
METADATA_MARK = b'{"model_type"'


def model_lib_name(chat_config: dict, target: str) -> str:
    """``{model_type}_{quantization}_{hash}``: a C identifier that never starts with a digit.

    The system-lib prefix is this name plus ``_``, far longer than the 8 characters below which
    TVM 0.27's ``system_lib=True`` build fails, and the runtime finds it as ``system://<name>``.
    """
    key = json.dumps({"config": chat_config["model_config"], "target": target}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    name = f"{chat_config['model_type']}_{chat_config['quantization']}_{digest}".replace("-", "_")
    assert IDENTIFIER.match(name), name
    return name


def tar_members(tar_path: Path) -> list[tuple[str, bytes]]:
    """The object files of a TVM ``.tar`` library (TVM writes it gzip-compressed)."""
    try:
        with tarfile.open(tar_path) as tf:
            return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError, gzip.BadGzipFile) as e:
        raise fail(tar_path, f"not a readable library archive: {e}")


def embedded_metadata(lib_path: Path) -> dict:
    """The ``_metadata`` JSON of a compiled library, read from its bytes (works for any target).

    TVM stores the string returned by ``_metadata`` verbatim in the VM executable's constants.
    """
    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise fail(lib_path, "model library not found")
    blobs = [data for _, data in tar_members(lib_path)] if lib_path.suffix == ".tar" else [lib_path.read_bytes()]
    for blob in blobs:
        start = blob.find(METADATA_MARK)
        while start >= 0:
            try:
                meta, _ = json.JSONDecoder().raw_decode(blob[start:start + (1 << 24)].decode("utf-8", "replace"))
                if "params" in meta and "quantization" in meta:
                    return meta
            except ValueError:
                pass
            start = blob.find(METADATA_MARK, start + 1)
    raise fail(lib_path, "no _metadata found: not a model library compiled by mcpm-mobile / MLC")
