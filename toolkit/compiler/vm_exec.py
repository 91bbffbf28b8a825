"""Read a Relax VM executable as TVM serializes it (``VMExecutable::SaveToBytes``).

Only what a user needs to compare a model library with an app's runtime: the header (magic,
version), the function table, the constants and the ``Call`` instructions. Layout from
apache/tvm ``src/runtime/vm/executable.cc`` and ``include/tvm/runtime/vm/bytecode.h``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC_V1 = 0xD225DE2F4214151D  # kTVMVMBytecodeMagic: no memory-scope section
MAGIC_V2 = 0xD225DE2F4214151E  # kTVMVMBytecodeMagicV2 (apache/tvm 8e402113, 2026-01-09)
TENSOR_MAGIC = 0xDD5E40F096B4A13F
# tvm-ffi TypeIndex values the constant section uses
T_INT, T_FLOAT, T_DTYPE, T_STR, T_SHAPE, T_TENSOR = 1, 3, 5, 65, 69, 70
OP_CALL, OP_RET, OP_GOTO, OP_IF = 1, 2, 3, 4
ARG_REGISTER, ARG_IMMEDIATE, ARG_CONST, ARG_FUNC = 0, 1, 2, 3


@dataclass
class Call:
    dst: int
    func: str
    args: list[tuple[int, int]]  # (kind, value)


@dataclass
class VMExecutable:
    magic: int
    version: str
    functions: list[str]
    constants: list = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


class _Stream:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        n = self.take("Q")
        if n > len(self.data) - self.pos:
            raise ValueError("string runs past the end")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8", "replace")

    def words(self) -> list[int]:
        n = self.take("Q")
        if 8 * n > len(self.data) - self.pos:
            raise ValueError("array runs past the end")
        return list(self.take(f"{n}q")) if n > 1 else ([self.take("q")] if n == 1 else [])


def find(blob: bytes) -> int:
    """Offset of the first VM executable header in ``blob`` (either magic), or -1."""
    hits = [blob.find(struct.pack("<Q", m)) for m in (MAGIC_V2, MAGIC_V1)]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else -1


def parse(blob: bytes, start: int) -> VMExecutable:
    s = _Stream(blob, start)
    magic = s.take("Q")
    if magic not in (MAGIC_V1, MAGIC_V2):
        raise ValueError("no VM executable header")
    version = s.string()
    functions = []
    for _ in range(s.take("Q")):  # VMFuncInfo::Save
        s.take("i")
        functions.append(s.string())
        s.take("qqqq")  # start_instr, end_instr, num_args, register_file_size
        for _ in range(s.take("Q")):
            s.string()
    if magic == MAGIC_V2:
        for _ in range(s.take("Q")):
            s.take("q")
            s.string()
    constants = [_constant(s) for _ in range(s.take("Q"))]
    offsets, data = s.words(), s.words()
    exe = VMExecutable(magic, version, functions, constants)
    for off in offsets:
        if data[off] == OP_CALL:
            dst, fidx, nargs = data[off + 1:off + 4]
            args = [_arg(w) for w in data[off + 4:off + 4 + nargs]]
            exe.calls.append(Call(dst, functions[fidx] if 0 <= fidx < len(functions) else f"#{fidx}", args))
    return exe


def _arg(word: int) -> tuple[int, int]:
    """(kind, value): the kind in the top 8 bits, a sign-extended 56-bit value below."""
    value = word & ((1 << 56) - 1)
    return (word >> 56) & 0xFF, value - (1 << 56) if value >= 1 << 55 else value


def _constant(s: _Stream):
    kind = s.take("i")
    if kind == T_TENSOR:
        if s.take("Q") != TENSOR_MAGIC:
            raise ValueError("bad tensor constant")
        s.take("Q")  # reserved
        s.take("ii")  # device
        ndim = s.take("i")
        s.take("BBH")  # dtype
        shape = [s.take("q") for _ in range(ndim)]
        nbytes = s.take("q")
        s.pos += nbytes
        return ("tensor", shape)
    if kind == T_SHAPE:
        return ("shape", [s.take("q") for _ in range(s.take("Q"))])
    if kind == T_STR:
        return s.string()
    if kind == T_INT:
        return s.take("q")
    if kind == T_FLOAT:
        return s.take("d")
    if kind == T_DTYPE:
        return ("dtype", s.take("BBH"))
    raise ValueError(f"unknown constant type {kind}")
