"""``manifest.json``: every file of a package with size and sha256, plus what built it from what."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from mcpm_mobile import __version__
from mcpm_mobile.errors import fail

FILENAME = "manifest.json"
FORMAT = "mcpm-mobile-package/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tool_versions() -> dict:
    versions = {"mcpm-mobile": __version__}
    for dist in ("apache-tvm", "apache-tvm-ffi", "gguf", "onnx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(root: Path, info: dict) -> dict:
    """Hash every file under ``root`` (except the manifest itself) and write ``manifest.json``."""
    root = Path(root)
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != FILENAME]
    manifest = {"format": FORMAT, **info, "versions": tool_versions(), "files": files}
    (root / FILENAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return manifest


def read_manifest(root: Path) -> dict:
    path = Path(root) / FILENAME
    if not path.is_file():
        raise fail(path, "not found (is this a package written by mcpm-mobile build?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(path, f"cannot read: {e}")
    if manifest.get("format") != FORMAT:
        raise fail(path, f"unknown format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def check_files(root: Path, manifest: dict) -> None:
    """Every listed file exists with its size and hash; no unlisted files."""
    root = Path(root)
    listed = set()
    for entry in manifest["files"]:
        path = root / entry["path"]
        listed.add(entry["path"])
        if not path.is_file():
            raise fail(path, "listed in manifest.json but missing")
        if path.stat().st_size != entry["size"]:
            raise fail(path, f"size {path.stat().st_size} differs from manifest.json ({entry['size']})")
        if sha256_file(path) != entry["sha256"]:
            raise fail(path, "sha256 differs from manifest.json (the file was modified or corrupted)")
    extra = [p.relative_to(root).as_posix() for p in root.rglob("*")
             if p.is_file() and p.name != FILENAME and p.relative_to(root).as_posix() not in listed]
    if extra:
        raise fail(root / extra[0], "not listed in manifest.json")
