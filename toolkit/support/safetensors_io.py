"""Safetensors, read through a memory map (no torch, bf16 included) and written tensor by tensor.

Format: 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from mcpm_mobile.errors import fail

DTYPES = {
    "F64": np.dtype("float64"), "F32": np.dtype("float32"), "F16": np.dtype("float16"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("int64"), "I32": np.dtype("int32"),
    "I16": np.dtype("int16"), "I8": np.dtype("int8"), "U8": np.dtype("uint8"), "BOOL": np.dtype("bool"),
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # safetensors name: "BF16", "F16", "F32", ...
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check the header of one safetensors file; raise a one-line error if it is corrupt."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise fail(path, "truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER, size - 8):
                raise fail(path, f"corrupt safetensors header (length {n} for a {size}-byte file)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise fail(path, "corrupt safetensors header (not valid JSON)")
    if not isinstance(header, dict):
        raise fail(path, "corrupt safetensors header")
    header.pop("__metadata__", None)
    data_start = 8 + n
    out = {}
    for name, h in header.items():
        try:
            dtype, shape, (b, e) = h["dtype"], tuple(h["shape"]), h["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise fail(path, f"corrupt safetensors entry for tensor '{name[:80]}'")
        if not all(_is_count(v) for v in (*shape, b, e)):
            raise fail(path, f"corrupt safetensors entry for tensor '{name[:80]}' (shape and offsets must be "
                             "non-negative integers)")
        if dtype not in DTYPES:
            raise fail(path, f"tensor '{name}' has unsupported dtype {str(dtype)[:20]}")
        expected = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: no overflow to 0
        if e - b != expected:
            raise fail(path, f"tensor '{name}': byte range {b}..{e} does not match shape {list(shape)} {dtype}")
        if data_start + e > size:
            raise fail(path, f"truncated: tensor '{name}' ends at byte {data_start + e} "
                             f"but the file has {size} bytes")
        out[name] = TensorInfo(name, path, dtype, shape, data_start + b, data_start + e)
    spans = sorted((i.begin, i.end, i.name) for i in out.values() if i.end > i.begin)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise fail(path, f"tensors '{a}' and '{b}' overlap (aliased data is not a valid safetensors file)")
    return out


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load(info: TensorInfo, rows: slice | None = None, private: bool = False) -> np.ndarray:
    """A memory-mapped view of one tensor or of its ``rows`` (step 1; only those bytes are mapped), no copy.
    Read-only; ``private``: a copy-on-write map, writable in memory without ever reaching the file (what
    DLPack needs to hand it to a kernel)."""
    dtype = DTYPES[info.dtype]
    shape, begin = info.shape, info.begin
    if rows is not None:
        r0, r1, _ = rows.indices(shape[0])
        shape = (max(0, r1 - r0), *shape[1:])
        begin += r0 * math.prod(info.shape[1:]) * dtype.itemsize
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    mm = np.memmap(info.file, dtype=np.uint8, mode="c" if private else "r", offset=begin,
                   shape=(math.prod(shape) * dtype.itemsize,))
    return mm.view(dtype).reshape(shape)


def write(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (numpy, bf16 via ml_dtypes) in safetensors format, in the given order."""
    specs = {name: (arr.shape, arr.dtype) for name, arr in tensors.items()}
    write_stream(path, specs, tensors.__getitem__, metadata)


def write_stream(path: Path, specs: dict[str, tuple[tuple, np.dtype]], produce, metadata: dict | None = None) -> None:
    """Write tensors one at a time: ``specs`` gives name -> (shape, dtype), ``produce(name)`` the array."""
    header, offset = {}, 0
    for name, (shape, dtype) in specs.items():
        dtype = np.dtype(dtype)
        if dtype not in NAMES:
            raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, (shape, dtype) in specs.items():
            arr = np.ascontiguousarray(produce(name), dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {arr.shape}, declared {tuple(shape)}")
            f.write(arr.tobytes())
