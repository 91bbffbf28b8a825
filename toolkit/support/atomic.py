"""Outputs land whole or not at all, and never on top of something mcpm-mobile did not write.

Every output directory carries a marker file, :data:`MARKER`; ``--force`` replaces a directory only
when the marker is there. A file output is replaced only when it is of the kind we write (its magic
bytes). Outputs that would replace the input, a folder holding the input, or the working directory are
refused before any work starts.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import zlib
from pathlib import Path

from mcpm_mobile import __version__
from mcpm_mobile.errors import fail

MARKER = ".mcpm-mobile"
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
FORCE_HINT = "use $force to replace it"


def check_output_path(path: Path, inputs: tuple = ()) -> Path:
    """Refuse outputs that are no place to write: '', '.', '..', the input or a folder around it."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise fail(path if str(path) else "''", "is not a usable output name (give a new folder or file name)")
    target = path.resolve()
    if target == Path(target.anchor):
        raise fail(path, "is the file-system root")
    if Path.cwd().resolve().is_relative_to(target):
        raise fail(path, "contains the current directory; choose an output outside it")
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if src == target or src.is_relative_to(target):
            raise fail(path, f"would replace the input {given}; choose another output")
        if src.is_dir() and target.is_relative_to(src):
            raise fail(path, f"is inside the input {given}; choose an output outside it")
    if path.is_symlink():
        raise fail(path, "is a symbolic link; give the real path")
    return path


def check_output_dir(path: Path, force: bool, inputs: tuple = ()) -> None:
    """Refuse a non-empty existing directory unless ``force`` and mcpm-mobile wrote it."""
    path = check_output_path(path, inputs)
    if path.exists() and not path.is_dir():
        raise fail(path, "exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise fail(path, f"output directory exists and is not empty ({FORCE_HINT})")
        if not (path / MARKER).is_file():
            raise fail(path, "was not written by mcpm-mobile (no .mcpm-mobile marker): $force replaces only "
                             "mcpm-mobile outputs; remove it yourself or choose another folder")


def _gzip_tar(head: bytes) -> bool:
    """A gzip-compressed tar: how TVM's ``export_library`` writes a ``.tar`` system library."""
    if not head.startswith(b"\x1f\x8b"):
        return False
    try:
        inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 512)
    except zlib.error:
        return False
    return inner[257:262] == b"ustar"


ELF = (b"\x7fELF",)
TAR = ((257, b"ustar"), _gzip_tar)
PNG = (b"\x89PNG\r\n\x1a\n",)
JSON = (b"{",)


def _matches(head: bytes, magic) -> bool:
    if callable(magic):
        return magic(head)
    offset, value = magic if isinstance(magic, tuple) else (0, magic)
    return head[offset:offset + len(value)] == value


def check_output_file(path: Path, force: bool, magic: tuple = (), inputs: tuple = ()) -> None:
    """Refuse an existing file unless ``force`` and it matches one of ``magic`` (a file of our kind).

    ``magic`` entries are byte prefixes, ``(offset, bytes)`` pairs or tests of the first bytes; see :data:`ELF`,
    :data:`TAR`."""
    path = check_output_path(path, inputs)
    if not path.exists():
        return
    if not path.is_file():
        raise fail(path, "exists and is not a regular file")
    if not force:
        raise fail(path, f"exists ({FORCE_HINT})")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    if magic and not any(_matches(head, m) for m in magic):
        raise fail(path, "is not a file of the kind mcpm-mobile writes here; $force will not replace it")


def unmark(folder: Path) -> None:
    """Drop the marker of an output written inside another one (a package's weights go to phones as they are)."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mkdir_parent(path: Path) -> list[Path]:
    """Create the missing parents of ``path``; returns them, innermost first, for removal on failure."""
    missing = [p for p in path.absolute().parents if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(path.parent, f"cannot create: {e.strerror or e}")
    return missing


def _remove_created(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if still empty


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False, inputs: tuple = (), kind: str = "output"):
    """Yield a temporary directory next to ``path``; on success it replaces ``path``.

    On any exception (signals included) the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    check_output_dir(path, force, inputs)
    created = _mkdir_parent(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    try:  # everything from the mkdir on, so that a signal at any point is cleaned up
        tmp.mkdir(mode=0o777 & ~_umask())
        (tmp / MARKER).write_text(json.dumps({"written_by": "mcpm-mobile", "version": __version__, "kind": kind}))
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException as e:
        _undo(tmp, old, path)
        _remove_created(created)
        _raise_write_error(e, path, tmp)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _undo(tmp: Path, old: Path, path: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    if old.exists() and not path.exists():
        old.rename(path)


@contextlib.contextmanager
def atomic_file(path: Path, force: bool = True, magic: tuple = (), inputs: tuple = ()):
    """Yield a temporary file path next to ``path``; renamed onto ``path`` on success."""
    path = Path(path)
    check_output_file(path, force, magic, inputs)
    created = _mkdir_parent(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.touch(mode=0o666 & ~_umask(), exist_ok=False)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _remove_created(created)
        _raise_write_error(e, path, tmp)
        raise


def _raise_write_error(e: BaseException, path: Path, tmp: Path) -> None:
    """A full disk or a read-only output becomes one line naming the output (not our temporary name)."""
    if isinstance(e, OSError) and (e.errno in WRITE_ERRORS or e.filename is None
                                   or str(e.filename).startswith(str(tmp))):
        raise fail(path, f"cannot write: {e.strerror or e}") from None
