"""Static archives (``.a``) of the objects in a TVM system-library ``.tar``, with a symbol index.

ELF objects (Android, HarmonyOS) go into a GNU archive with a ``/`` index; Mach-O objects (iOS)
into a BSD archive with a ``__.SYMDEF`` table of contents, which Apple's linker requires.
The app links it with ``--whole-archive`` / ``-force_load`` so the registration constructors survive.
"""
from __future__ import annotations

import struct
from pathlib import Path

MAGIC = b"!<arch>\n"
ELF_MAGIC = b"\x7fELF"
MACHO_MAGIC = b"\xcf\xfa\xed\xfe"  # MH_MAGIC_64, little endian


def defined_symbols(obj: bytes) -> list[str]:
    """Global symbols an object defines (ELF64 or Mach-O 64, little endian)."""
    if obj[:4] == ELF_MAGIC:
        return _elf_symbols(obj)
    if obj[:4] == MACHO_MAGIC:
        return _macho_symbols(obj)
    raise ValueError("not an ELF64 or Mach-O 64 object")


def undefined_symbols(obj: bytes) -> list[str]:
    """Global symbols an object needs from elsewhere (the runtime it is linked into)."""
    if obj[:4] == ELF_MAGIC:
        return _elf_symbols(obj, defined=False)
    if obj[:4] == MACHO_MAGIC:
        return _macho_symbols(obj, defined=False)
    raise ValueError("not an ELF64 or Mach-O 64 object")


def _elf_symbols(obj: bytes, defined: bool = True) -> list[str]:
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _, sh_type, _, _, off, size, link, _, _, entsize in sections:
        if sh_type != 2:  # SHT_SYMTAB
            continue
        str_off = sections[link][4]
        for i in range(size // entsize):
            st_name, st_info, _, st_shndx = struct.unpack_from("<IBBH", obj, off + i * entsize)
            if st_info >> 4 in (1, 2) and (st_shndx != 0) == defined and st_name:  # GLOBAL/WEAK
                end = obj.index(b"\0", str_off + st_name)
                names.append(obj[str_off + st_name:end].decode())
    return names


def _macho_symbols(obj: bytes, defined: bool = True) -> list[str]:
    ncmds, = struct.unpack_from("<I", obj, 16)
    pos, names = 32, []
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", obj, pos)
        if cmd == 0x2:  # LC_SYMTAB
            symoff, nsyms, stroff, _ = struct.unpack_from("<IIII", obj, pos + 8)
            for i in range(nsyms):
                n_strx, n_type = struct.unpack_from("<IB", obj, symoff + 16 * i)
                if n_type & 0x01 and (n_type & 0x0E == (0x0E if defined else 0)):  # N_EXT, N_SECT / N_UNDF
                    end = obj.index(b"\0", stroff + n_strx)
                    names.append(obj[stroff + n_strx:end].decode())
        pos += cmdsize
    return names


def symbol_offset(obj: bytes, name: str) -> int | None:
    """File offset of the data of defined symbol ``name`` (ELF64 object or shared library, Mach-O 64
    object), or None."""
    if obj[:4] == ELF_MAGIC:
        shoff, = struct.unpack_from("<Q", obj, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
        for _, sh_type, _, _, off, size, link, _, _, entsize in sections:
            if sh_type not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
                continue
            str_off = sections[link][4]
            for i in range(size // entsize):
                st_name, _, _, st_shndx, st_value = struct.unpack_from("<IBBHQ", obj, off + i * entsize)
                end = obj.index(b"\0", str_off + st_name)
                if obj[str_off + st_name:end].decode() == name and 0 < st_shndx < len(sections):
                    _, _, _, addr, sec_off = sections[st_shndx][:5]
                    return sec_off + st_value - addr  # addr is 0 in a relocatable object
        return None
    if obj[:4] == MACHO_MAGIC:
        ncmds, = struct.unpack_from("<I", obj, 16)
        pos, sects, symtab = 32, [], None
        for _ in range(ncmds):
            cmd, cmdsize = struct.unpack_from("<II", obj, pos)
            if cmd == 0x19:  # LC_SEGMENT_64: section_64 headers follow the segment command
                nsects, = struct.unpack_from("<I", obj, pos + 64)
                for j in range(nsects):
                    addr, _, offset = struct.unpack_from("<QQI", obj, pos + 72 + 80 * j + 32)
                    sects.append((addr, offset))
            elif cmd == 0x2:
                symtab = struct.unpack_from("<IIII", obj, pos + 8)
            pos += cmdsize
        if symtab is None:
            return None
        symoff, nsyms, stroff, _ = symtab
        for i in range(nsyms):
            n_strx, n_type, n_sect, _, n_value = struct.unpack_from("<IBBHQ", obj, symoff + 16 * i)
            end = obj.index(b"\0", stroff + n_strx)
            if obj[stroff + n_strx:end].decode() in (name, "_" + name) and n_type & 0x0E == 0x0E:
                addr, offset = sects[n_sect - 1]
                return offset + n_value - addr
        return None
    raise ValueError("not an ELF64 or Mach-O 64 object")


def _header(name: bytes, size: int) -> bytes:
    return b"%-16s%-12d%-6d%-6d%-8o%-10d`\n" % (name, 0, 0, 0, 0o644, size)


def _pad(data: bytes) -> bytes:
    return data + b"\n" * (len(data) % 2)


def write_archive(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Write ``members`` (name, object bytes) as a static archive with a symbol index."""
    if members and members[0][1][:4] == MACHO_MAGIC:
        data = _bsd_archive(members)
    else:
        data = _gnu_archive(members)
    Path(path).write_bytes(data)


def _gnu_archive(members: list[tuple[str, bytes]]) -> bytes:
    longnames = b"".join(name.encode() + b"/\n" for name, _ in members)
    symbols = [(s, i) for i, (_, obj) in enumerate(members) for s in defined_symbols(obj)]
    index_size = 4 + 4 * len(symbols) + sum(len(s) + 1 for s, _ in symbols)
    pos = len(MAGIC) + 60 + index_size + index_size % 2 + 60 + len(longnames) + len(longnames) % 2
    offsets, body, name_off = [], b"", 0
    for name, obj in members:
        offsets.append(pos + len(body))
        body += _header(b"/%d" % name_off, len(obj)) + _pad(obj)
        name_off += len(name) + 2
    index = struct.pack(">I", len(symbols)) + b"".join(struct.pack(">I", offsets[i]) for _, i in symbols)
    index += b"".join(s.encode() + b"\0" for s, _ in symbols)
    return (MAGIC + _header(b"/", len(index)) + _pad(index) + _header(b"//", len(longnames)) + _pad(longnames)
            + body)


def _bsd_archive(members: list[tuple[str, bytes]]) -> bytes:
    def member(name: str, data: bytes) -> bytes:
        raw = name.encode()
        raw += b"\0" * (-len(raw) % 8)
        return _header(b"#1/%d" % len(raw), len(raw) + len(data)) + raw + _pad(data)

    symbols = sorted((s, i) for i, (_, obj) in enumerate(members) for s in defined_symbols(obj))
    strtab = b"".join(s.encode() + b"\0" for s, _ in symbols)
    strtab += b"\0" * (-len(strtab) % 8)
    toc_name = "__.SYMDEF SORTED"
    toc_len = len(member(toc_name, b"\0" * (8 + 8 * len(symbols) + len(strtab))))
    offsets, body = [], b""
    for name, obj in members:
        offsets.append(len(MAGIC) + toc_len + len(body))
        body += member(name, obj)
    ranlib, stroff = b"", 0
    for s, i in symbols:
        ranlib += struct.pack("<II", stroff, offsets[i])
        stroff += len(s) + 1
    toc = struct.pack("<I", len(ranlib)) + ranlib + struct.pack("<I", len(strtab)) + strtab
    return MAGIC + member(toc_name, toc) + body
