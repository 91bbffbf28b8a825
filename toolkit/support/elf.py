"""Check that a shared library is whole before the dynamic loader maps it.

A truncated ``.so`` passes ``dlopen``'s header checks and dies with SIGBUS when a page past the end of
the file is touched; comparing the ELF program and section headers with the file size catches it.
"""
from __future__ import annotations

import struct
from pathlib import Path

from mcpm_mobile.errors import fail

MAGIC = b"\x7fELF"
PT_LOAD = 1


def check_library_file(path: Path) -> None:
    """Refuse an ELF file whose headers point past its end; other files are left to their loader."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            if not head.startswith(MAGIC):
                return
            if len(head) < 64 or head[4] != 2:
                raise fail(path, "not a 64-bit ELF library")
            end = "<" if head[5] == 1 else ">"
            phoff, shoff = struct.unpack_from(end + "QQ", head, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 54)
            if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
                raise fail(path, f"truncated library ({size} bytes; its headers point past the end)")
            f.seek(phoff)
            table = f.read(phnum * phentsize)
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(end + "IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD and p_offset + p_filesz > size:
            raise fail(path, f"truncated library ({size} bytes; a segment ends at byte {p_offset + p_filesz})")
