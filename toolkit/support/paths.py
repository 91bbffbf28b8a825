"""Reading stays inside its root: the checkpoint folder, the weights folder, the package.

Policy (docs/reliability.md): a path taken from a file (a shard index, ``tensor-cache.json``, a manifest,
ONNX external data) must be relative, without ``..``, and land inside its root. A symbolic link is
followed only when its target stays inside the root; for a Hugging Face cache snapshot
(``models--ORG--NAME/snapshots/REV/``), whose files link to ``../../blobs/``, the root is the repo folder.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from mcpm_mobile.errors import fail


def containment_root(folder: Path) -> Path:
    """The folder that links from ``folder`` may point into."""
    real = Path(folder).resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def check_inside(root: Path, path: Path) -> Path:
    """``path`` with links resolved lies inside ``root``; returns ``path``."""
    if not Path(path).resolve().is_relative_to(containment_root(root)):
        raise fail(path, f"is a symbolic link that leaves {Path(root).name}/; copy the file in instead")
    return Path(path)


def member(root: Path, rel, source) -> Path:
    """``root/rel`` for a path named inside ``source`` (a file we parse); refused if it could leave ``root``."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise fail(source, f"names a file as {rel!r}, which is not a relative path")
    parts = PurePosixPath(rel)
    if parts.is_absolute() or ".." in parts.parts:
        raise fail(source, f"names '{rel}', which leaves {Path(root).name}/ (absolute or '..' paths are refused)")
    return check_inside(root, Path(root) / parts)


def regular_file(root: Path, path: Path) -> bool:
    """True for a regular file inside ``root`` (links resolved); False when absent; refuses escapes."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return False
    check_inside(root, path)
    if not path.is_file():
        raise fail(path, "is not a regular file")
    return True
