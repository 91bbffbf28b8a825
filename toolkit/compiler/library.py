"""``ModelLibrary``: a compiled model library (path, name, target and the ``_metadata`` it embeds).

``compile`` writes one and returns it with the metadata it already holds; :meth:`ModelLibrary.read`
recovers the metadata from the file's bytes (any target, no TVM needed). Also the library naming
rules and the readers of a TVM ``.tar`` (its objects, the GPU kernel sources inside).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.support.ar import defined_symbols, symbol_offset
from mcpm_mobile.target import Target

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
METADATA_MARK = b'{"model_type"'
LIBRARY_BIN = "__tvm_ffi__library_bin"
DEVICE_MODULES = ("opencl", "metal", "cuda")


def model_lib_name(chat_config: dict, target: str) -> str:
    """``{model_type}_{quantization}_{hash}``: a C identifier that never starts with a digit.

    The system-lib prefix is this name plus ``_``, far longer than the 8 characters below which
    TVM 0.27's ``system_lib=True`` build fails, and the runtime finds it as ``system://<name>``.
    """
    key = json.dumps({"config": chat_config["model_config"], "target": target}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    name = f"{chat_config['model_type']}_{chat_config['quantization']}_{digest}".replace("-", "_")
    assert IDENTIFIER.match(name), name
    return name


def check_system_lib_prefix(prefix: str) -> str:
    """TVM 0.27 fails to build a system library with a prefix under 8 characters, and a prefix
    starting with a digit makes OpenCL/Metal kernel names invalid."""
    if not (IDENTIFIER.match(prefix) and len(prefix) >= 8):
        raise MCPMError(f"$system_lib_prefix '{prefix}': must be a C identifier (letters, digits, '_', "
                        "not starting with a digit) of at least 8 characters")
    return prefix


@dataclass
class ModelLibrary:
    path: Path
    metadata: dict  # the library's _metadata, memory_usage included
    target: Target | None = None  # None: read from a file whose target is not known
    system_lib_prefix: str | None = None  # static system libraries: the prefix of their symbols
    seconds: dict = field(default_factory=dict)  # compile time per stage, when just compiled

    @classmethod
    def read(cls, path: Path | str, target: Target | None = None) -> "ModelLibrary":
        return cls(Path(path), embedded_metadata(path), target)

    @property
    def name(self) -> str | None:
        """What the app loads as ``system://<name>`` (static system libraries only)."""
        return self.system_lib_prefix.removesuffix("_") if self.system_lib_prefix else None

    @property
    def memory_usage(self) -> dict[str, int]:
        return self.metadata.get("memory_usage") or {}

    @property
    def workspace_bytes(self) -> int:
        """The largest statically planned workspace of any function."""
        return int(max((v for v in self.memory_usage.values() if isinstance(v, (int, float))), default=0))


def tar_members(tar_path: Path) -> list[tuple[str, bytes]]:
    """The object files of a TVM ``.tar`` library (TVM writes it gzip-compressed)."""
    try:
        with tarfile.open(tar_path) as tf:
            return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    except OSError as e:
        raise fail(tar_path, f"cannot read: {e.strerror or e}")
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error):
        raise fail(tar_path, "not a library archive (TVM writes a tar, gzip-compressed or not)")


def embedded_metadata(lib_path: Path) -> dict:
    """The ``_metadata`` JSON of a compiled library, read from its bytes (works for any target).

    TVM stores the string returned by ``_metadata`` verbatim in the VM executable's constants.
    """
    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise fail(lib_path, "model library not found")
    blobs = [data for _, data in tar_members(lib_path)] if lib_path.suffix == ".tar" else [lib_path.read_bytes()]
    for blob in blobs:
        start = blob.find(METADATA_MARK)
        while start >= 0:
            try:
                meta, _ = json.JSONDecoder().raw_decode(blob[start:start + (1 << 24)].decode("utf-8", "replace"))
                if "params" in meta and "quantization" in meta:
                    return meta
            except ValueError:
                pass
            start = blob.find(METADATA_MARK, start + 1)
    raise fail(lib_path, "no _metadata found: not a model library compiled by mcpm-mobile / MLC")


def device_sources(lib_path: Path) -> dict[str, str]:
    """The GPU kernel sources embedded in a ``.tar`` model library: {kernel name: source}.

    OpenCL: one self-contained program per kernel (TVM compiles each separately on the device);
    Metal: one source per kernel; CUDA C: the whole module under the key ``"cuda"``. Empty for a
    CPU library. Read from the serialized module tree in the
    ``<prefix>__tvm_ffi__library_bin`` blob of ``<prefix>devc.o`` (TVM 0.27's format).
    """
    lib_path = Path(lib_path)
    for _, obj in tar_members(lib_path):
        if obj[:4] not in (b"\x7fELF", b"\xcf\xfa\xed\xfe"):
            continue
        for sym in defined_symbols(obj):
            if sym.endswith(LIBRARY_BIN):
                start = symbol_offset(obj, sym)
                try:
                    return _module_sources(_Reader(obj, start))
                except (struct.error, ValueError, IndexError) as e:
                    raise fail(lib_path, f"unrecognised library blob in {sym}: {e}")
    raise fail(lib_path, f"no {LIBRARY_BIN} symbol: not a TVM system library")


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos
        self.end = pos + 8 + self.u64()  # the blob starts with its own length

    def u64(self) -> int:
        v, = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def skip(self, item_size: int) -> None:
        """Skip a length-prefixed array of fixed-size items."""
        n = self.u64()
        self.pos += item_size * n

    def bytes(self) -> bytes:
        n = self.u64()
        if self.pos + n > self.end:
            raise ValueError("truncated")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def str(self) -> str:
        return self.bytes().decode("utf-8")


def _module_sources(r: _Reader) -> dict[str, str]:
    r.skip(8)  # import tree: row pointers
    r.skip(8)  # and child indices
    out = {}
    while r.pos < r.end:
        kind = r.str()
        if kind == "_lib":
            continue
        payload = r.bytes()
        if kind in DEVICE_MODULES:
            out.update(_device_sources(kind, _Reader(struct.pack("<Q", len(payload)) + payload, 0)))
    return out


def _device_sources(kind: str, r: _Reader) -> dict[str, str]:
    fmt = r.str()
    for _ in range(r.u64()):  # function table: name -> (name, arg types, launch tags, arg tags)
        r.str()
        r.str()
        r.skip(4)
        for _ in range(r.u64()):
            r.str()
        r.skip(4)
    if kind == "metal":
        return {r.str(): r.str() for _ in range(r.u64())} if fmt == "metal" else {}
    if fmt == "cl":
        parts = re.split(r"^// Function: (\S+)\n", r.str(), flags=re.M)
        return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}
    return {"cuda": r.str()} if fmt in ("cu", "cuda") else {}
