"""PyTorch ``.bin`` checkpoints (``torch.save`` zip format), read without torch and without running pickled code.

Format (torch >= 1.6): an uncompressed zip archive ``<root>/data.pkl`` (the state dict, pickled; each tensor
is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and each storage a persistent id
``("storage", torch.<Type>Storage, key, location, numel)``), one member ``<root>/data/<key>`` per storage with
its raw little-endian bytes, and ``<root>/byteorder``/``<root>/version``. The pickle is read by an unpickler
that knows only those few globals and refuses every other one; storages are memory-mapped in place.
"""
from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from mcpm_mobile.errors import fail

# torch storage class -> safetensors dtype name (the names the rest of the toolkit uses)
STORAGE_DTYPES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
DTYPES = {
    "F64": np.dtype("float64"), "F32": np.dtype("float32"), "F16": np.dtype("float16"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("int64"), "I32": np.dtype("int32"),
    "I16": np.dtype("int16"), "I8": np.dtype("int8"), "U8": np.dtype("uint8"), "BOOL": np.dtype("bool"),
}
MAX_PICKLE = 256 * 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: a strided view of a storage that lies at ``storage_begin`` in ``file``."""
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    storage_begin: int  # absolute byte offset of the storage's first element
    offset: int  # element offset of the tensor in its storage
    strides: tuple[int, ...]  # in elements
    storage_numel: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple
    strides: tuple


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module, name):
        found = _GLOBALS.get((module, name))
        if found is None:
            raise fail(self.path, f"refusing to load: the pickle references {module}.{name}, which is not "
                                  "tensor data (mcpm-mobile never runs code from a checkpoint)")
        return found

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[4], int) or pid[4] < 0):
            raise fail(self.path, f"unexpected persistent id in the pickle ({type(pid).__name__})")
        return _Storage(pid[1].dtype, str(pid[2]), pid[4])


def _member_data_offset(path: Path, fh, info: zipfile.ZipInfo, size: int) -> int:
    """Absolute offset of a stored member's bytes (from its local header, whose extra field may differ)."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise fail(path, f"zip member {info.filename} is compressed; torch.save writes storages uncompressed")
    fh.seek(info.header_offset)
    head = fh.read(_LOCAL_HEADER.size)
    if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise fail(path, f"corrupt zip: bad local header for {info.filename}")
    fields = _LOCAL_HEADER.unpack(head)
    begin = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    if begin + info.file_size > size:
        raise fail(path, f"truncated: zip member {info.filename} ends past the end of the file")
    return begin


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Index every tensor of one ``torch.save`` file; raise a one-line error if it is not a plain state dict."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not zipfile.is_zipfile(path):
            raise fail(path, "not a torch.save zip archive (the legacy pre-1.6 PyTorch format is not supported; "
                             "re-save it with torch >= 1.6 or convert it to safetensors)")
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            members = {i.filename: i for i in zf.infolist()}
            pkl = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise fail(path, "not a torch.save archive (no <name>/data.pkl)")
            root = pkl[0][: -len("data.pkl")]
            order = members.get(root + "byteorder")
            if order is not None and zf.read(order).strip() != b"little":
                raise fail(path, "big-endian torch archive; only little-endian is supported")
            if members[pkl[0]].file_size > MAX_PICKLE:
                raise fail(path, "data.pkl is implausibly large for a state dict")
            state = _Unpickler(zf.read(pkl[0]), path).load()
            tensors = _flatten(path, state)
            out, storages = {}, {}
            for name, t in tensors.items():
                s = t.storage
                if s.key not in storages:
                    m = members.get(f"{root}data/{s.key}")
                    if m is None:
                        raise fail(path, f"tensor '{name}': storage {s.key} is missing from the archive")
                    need = s.numel * DTYPES[s.dtype].itemsize
                    if m.file_size < need:
                        raise fail(path, f"tensor '{name}': storage {s.key} has {m.file_size} bytes, "
                                         f"its header says {need}")
                    storages[s.key] = (s, _member_data_offset(path, fh, m, size))
                stored, begin = storages[s.key]
                if (stored.dtype, stored.numel) != (s.dtype, s.numel):
                    raise fail(path, f"tensor '{name}': storage {s.key} is declared twice, differently")
                _check_extent(path, name, t)
                out[name] = TensorInfo(name, path, s.dtype, t.shape, begin, t.offset, t.strides, s.numel)
            return out
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as e:
        raise fail(path, f"corrupt PyTorch checkpoint ({type(e).__name__})")


def _flatten(path: Path, state) -> dict[str, _Tensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise fail(path, f"the pickle holds a {type(state).__name__}, not a state dict")
    out = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise fail(path, "state dict has a non-string key")
        if not isinstance(value, _Tensor):
            raise fail(path, f"state dict entry '{name}' is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out


def _check_extent(path: Path, name: str, t: _Tensor) -> None:
    ints = (t.offset, *t.shape, *t.strides)
    if len(t.shape) != len(t.strides) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise fail(path, f"tensor '{name}': invalid size {list(t.shape)} / stride {list(t.strides)}")
    if 0 in t.shape:
        return
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.strides))
    if last >= t.storage.numel:
        raise fail(path, f"tensor '{name}': size {list(t.shape)} stride {list(t.strides)} offset {t.offset} "
                         f"reaches past its storage of {t.storage.numel} elements")


def load(info: TensorInfo, rows: slice | None = None, private: bool = False) -> np.ndarray:
    """A memory-mapped view of one tensor or of its ``rows`` (step 1), no copy; strided when the tensor is a
    view. Only the storage bytes the view spans are mapped. Read-only; ``private``: copy-on-write (writable in
    memory, never reaching the file)."""
    dtype = DTYPES[info.dtype]
    shape, first = info.shape, info.offset
    if rows is not None:
        r0, r1, _ = rows.indices(shape[0])
        shape = (max(0, r1 - r0), *shape[1:])
        first += r0 * info.strides[0]
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype)
    span = 1 + sum((n - 1) * st for n, st in zip(shape, info.strides))  # elements from the first to the last
    mm = np.memmap(info.file, dtype=np.uint8, mode="c" if private else "r",
                   offset=info.storage_begin + first * dtype.itemsize, shape=(span * dtype.itemsize,))
    strides = tuple(s * dtype.itemsize for s in info.strides)
    view = np.lib.stride_tricks.as_strided(mm.view(dtype), shape, strides, writeable=private)
    return view


def fingerprint(h: "hashlib._Hash", path: Path) -> None:
    """Feed the archive's pickle (names, shapes, layout) into ``h``: identifies the file without reading weights."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        h.update(zf.read(name))


# --- writer: the same archive layout torch.save writes (used for stand-ins of .bin releases) -------------------

_STORAGE_OF = {dtype: name for name, dtype in STORAGE_DTYPES.items()}


def _pickle_state_dict(entries: list[tuple[str, str, tuple[int, ...], int]]) -> bytes:
    """Protocol-2 pickle of an OrderedDict of ``_rebuild_tensor_v2`` calls, one storage per tensor
    (``entries``: name, dtype, shape, storage key), with the opcodes torch.save's pickler emits."""
    def text(s: str) -> bytes:
        b = s.encode("utf-8")
        return b"X" + struct.pack("<I", len(b)) + b

    def integer(i: int) -> bytes:
        if 0 <= i < 256:
            return b"K" + bytes([i])
        if 0 <= i < 65536:
            return b"M" + struct.pack("<H", i)
        return b"J" + struct.pack("<i", i) if -2**31 <= i < 2**31 else b"\x8a\x08" + struct.pack("<q", i)

    def tup(items: list[bytes]) -> bytes:
        return (b"(" + b"".join(items) + b"t") if items else b")"

    out = b"\x80\x02ccollections\nOrderedDict\n)R"
    if entries:
        out += b"("
    for name, dtype, shape, key in entries:
        numel = int(np.prod(shape, dtype=np.int64))
        strides, acc = [], 1
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        strides.reverse()
        storage = (b"(" + text("storage") + f"ctorch\n{_STORAGE_OF[dtype]}\n".encode() + text(str(key))
                   + text("cpu") + integer(numel) + b"tQ")
        out += text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + tup([
            storage, integer(0), tup([integer(n) for n in shape]), tup([integer(s) for s in strides]),
            b"\x89", b"ccollections\nOrderedDict\n)R"]) + b"R"
    if entries:
        out += b"u"
    return out + b"."


def write(path: Path, tensors: dict[str, np.ndarray], root: str | None = None) -> None:
    """Write ``tensors`` (numpy; bf16 via ml_dtypes) as a ``torch.save`` zip archive."""
    write_stream(path, {n: (a.shape, a.dtype) for n, a in tensors.items()}, tensors.__getitem__, root)


def write_stream(path: Path, specs: dict[str, tuple[tuple, np.dtype]], produce, root: str | None = None) -> None:
    """Write tensors one at a time as a ``torch.save`` zip archive: ``specs`` gives name -> (shape, dtype),
    ``produce(name)`` the array. Members are uncompressed and storages aligned to 64 bytes, as torch writes them."""
    path = Path(path)
    root = root or path.stem
    names = {v: k for k, v in DTYPES.items()}
    entries = []
    for i, (name, (shape, dtype)) in enumerate(specs.items()):
        if np.dtype(dtype) not in names:
            raise ValueError(f"{name}: dtype {dtype} has no torch storage type")
        entries.append((name, names[np.dtype(dtype)], tuple(shape), i))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        def put(member: str, data) -> None:
            info = zipfile.ZipInfo(f"{root}/{member}", date_time=(1980, 1, 1, 0, 0, 0))
            # pad the local header's extra field so the data starts on a 64-byte boundary
            offset = zf.fp.tell() + 30 + len(info.filename.encode()) + 4
            info.extra = struct.pack("<HH", 0xCAFE, -offset % 64) + b"\0" * (-offset % 64)
            zf.writestr(info, data)

        put("data.pkl", _pickle_state_dict(entries))
        put("byteorder", b"little")
        for i, (name, (shape, dtype)) in enumerate(specs.items()):
            arr = np.asarray(produce(name), dtype=dtype)
            arr = arr if arr.flags.c_contiguous else arr.copy()  # (ascontiguousarray turns 0-d into 1-d)
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {arr.shape}, declared {tuple(shape)}")
            put(f"data/{i}", memoryview(arr.reshape(-1).view(np.uint8)))
        put("version", b"3\n")
