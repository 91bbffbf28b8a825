"""Write a directory or file to a temporary sibling, then rename it into place."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from mcpm_mobile.errors import fail


def check_output_dir(path: Path, force: bool) -> None:
    """Refuse a non-empty existing output directory unless ``force``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise fail(path, "exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise fail(path, "output directory exists and is not empty (use $force to replace it)")


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False):
    """Yield a temporary directory next to ``path``; on success it replaces ``path``.

    On any exception the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary file path next to ``path``; renamed onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
