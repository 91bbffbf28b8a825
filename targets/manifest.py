"""``manifest.json``: every file of a package with size and sha256, plus what built it from what."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from mcpm_mobile import __version__
from mcpm_mobile.errors import fail
from mcpm_mobile.support.jsonio import loads
from mcpm_mobile.support.paths import member, regular_file

FILENAME = "manifest.json"
FORMAT = "mcpm-mobile-package/1"
DIGEST = "manifest_sha256"


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


def digest(manifest: dict) -> str:
    """sha256 over the manifest's canonical JSON without its own digest: an edited field shows."""
    body = {k: v for k, v in manifest.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def write_manifest(root: Path, info: dict) -> dict:
    """Hash every file under ``root`` (except the manifest itself) and write ``manifest.json``."""
    root = Path(root)
    files = [{"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != FILENAME]
    manifest = {"format": FORMAT, **info, "versions": tool_versions(), "files": files}
    manifest[DIGEST] = digest(manifest)
    (root / FILENAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    return manifest


def read_manifest(root: Path) -> dict:
    path = Path(root) / FILENAME
    if not regular_file(root, path):
        raise fail(path, "not found (is this a package written by mcpm-mobile build?)")
    try:
        manifest = loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(path, f"cannot read JSON: {e}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise fail(path, f"unknown format {str(found)[:40]!r} (expected {FORMAT})")
    if DIGEST not in manifest:
        raise fail(path, f"has no {DIGEST} (edited, or written by an older mcpm-mobile: build it again)")
    if manifest.get(DIGEST) != digest(manifest):
        raise fail(path, "was edited after the build (its manifest_sha256 does not match its content)")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise fail(path, "lists no files")
    seen = set()
    for entry in files:
        ok = (isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"] not in seen
              and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool) and entry["size"] >= 0
              and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64)
        if not ok:
            raise fail(path, f"malformed or repeated file entry {str(entry)[:80]}")
        seen.add(entry["path"])
        member(root, entry["path"], path)
    return manifest


def check_files(root: Path, manifest: dict) -> None:
    """Every listed file exists with its size and hash; no unlisted files; no symbolic links."""
    root = Path(root)
    for p in root.rglob("*"):
        if p.is_symlink():
            raise fail(p, "is a symbolic link (a package holds regular files only)")
    listed = set()
    for entry in manifest["files"]:
        path = member(root, entry["path"], root / FILENAME)
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
