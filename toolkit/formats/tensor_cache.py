"""MLC-LLM / TVM weight format: ``tensor-cache.json`` plus ``params_shard_N.bin``.

Sharding follows TVM's ``tvmjs.dump_tensor_cache`` (cap 32 MiB): a tensor that would overflow the
pending shard is written alone to its own shard if it is at least half the cap, otherwise the
pending shard is flushed first. Tensors sit back to back without padding. We store every tensor
with ``"format": "raw"``, so float32 scales of q4f32_1 stay exact (MLC's default ``f32-to-bf16``
would round them to bf16); TVM's loader reads both.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.support.jsonio import loads
from mcpm_mobile.support.paths import member, regular_file

INDEX = "tensor-cache.json"
OLD_INDEX = "ndarray-cache.json"  # what MLC called it before TVM's tensor-cache rename
SHARD_CAP = 32 * (1 << 20)
SHARD_PREFIX = "params_shard"


class TensorCacheWriter:
    """Stream named numpy arrays into shards; call :meth:`finish` to write the index."""

    def __init__(self, out_dir: Path, shard_cap: int = SHARD_CAP):
        self.dir = Path(out_dir)
        self.cap = shard_cap
        self.shards: list[dict] = []
        self.pending: list[tuple[dict, memoryview]] = []
        self.pending_bytes = 0
        self.names: set[str] = set()
        self.param_count = 0
        self.param_bytes = 0

    def add(self, name: str, array: np.ndarray, logical_params: int | None = None) -> None:
        """Add one tensor. ``logical_params`` counts the weights it stands for (for BitsPerParam)."""
        if name in self.names:
            raise ValueError(f"duplicate tensor name {name}")
        self.names.add(name)
        array = np.ascontiguousarray(array)
        data = memoryview(array).cast("B")
        rec = {"name": name, "shape": list(array.shape), "dtype": str(array.dtype), "format": "raw",
               "nbytes": len(data)}
        self.param_count += array.size if logical_params is None else logical_params
        self.param_bytes += len(data)
        if self.pending_bytes + len(data) >= self.cap:
            if 2 * len(data) >= self.cap:
                rec["byteOffset"] = 0
                self._commit([(rec, data)])
                return
            self._flush()
        rec["byteOffset"] = self.pending_bytes
        self.pending.append((rec, data))
        self.pending_bytes += len(data)

    def _flush(self) -> None:
        if self.pending_bytes:
            self._commit(self.pending)
            self.pending, self.pending_bytes = [], 0

    def _commit(self, items: list[tuple[dict, memoryview]]) -> None:
        path = f"{SHARD_PREFIX}_{len(self.shards)}.bin"
        md5, nbytes = hashlib.md5(), 0
        with open(self.dir / path, "wb") as f:
            for _, data in items:
                f.write(data)
                md5.update(data)
                nbytes += len(data)
        self.shards.append({"dataPath": path, "format": "raw-shard", "nbytes": nbytes,
                            "records": [rec for rec, _ in items], "md5sum": md5.hexdigest()})

    def finish(self) -> dict:
        self._flush()
        index = {"metadata": {"ParamSize": len(self.names), "ParamBytes": float(self.param_bytes),
                              "BitsPerParam": 8.0 * self.param_bytes / max(self.param_count, 1)},
                 "records": self.shards}
        (self.dir / INDEX).write_text(json.dumps(index, indent=2, allow_nan=False))
        return index


def find_index(weights_dir: Path) -> Path | None:
    return next((Path(weights_dir) / n for n in (INDEX, OLD_INDEX) if (Path(weights_dir) / n).is_file()), None)


def read_index(weights_dir: Path) -> dict:
    path = find_index(weights_dir) or Path(weights_dir) / INDEX
    if not regular_file(weights_dir, path):
        raise fail(path, "not found (is this an mcpm-mobile/MLC weights directory?)")
    try:
        index = loads(path.read_text())
        index["records"]
    except OSError as e:
        raise fail(path, f"cannot read: {e.strerror or e}")
    except (ValueError, KeyError, TypeError) as e:
        raise fail(path, f"cannot read: {type(e).__name__} {e}")
    _check_records(path, index)
    return index


def _count(value, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(path, f"{what} must be a non-negative integer (got {str(value)[:40]!r})")
    return value


def _check_records(path: Path, index: dict) -> None:
    """Types, shapes, dtypes, sizes and byte ranges of every record, before anything is read."""
    if not isinstance(index["records"], list):
        raise fail(path, "'records' must be a list")
    names = set()
    for shard in index["records"]:
        if not isinstance(shard, dict) or not isinstance(shard.get("records"), list):
            raise fail(path, "every shard must be an object with a 'records' list")
        member(path.parent, shard.get("dataPath"), path)
        size = _count(shard.get("nbytes"), "a shard's nbytes", path)
        spans = []
        for rec in shard["records"]:
            name = rec.get("name") if isinstance(rec, dict) else None
            if not isinstance(name, str) or name in names:
                raise fail(path, f"record name {str(name)[:60]!r} is missing or repeated")
            names.add(name)
            try:
                dtype = np.dtype(rec["dtype"])
            except (KeyError, TypeError):
                raise fail(path, f"'{name}': unknown dtype")
            shape = rec.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in shape):
                raise fail(path, f"'{name}': shape must be a list of non-negative integers")
            begin, nbytes = _count(rec.get("byteOffset"), f"'{name}' byteOffset", path), \
                _count(rec.get("nbytes"), f"'{name}' nbytes", path)
            stored = math.prod(shape) * (2 if rec.get("format") == "f32-to-bf16" else dtype.itemsize)
            if nbytes != stored:
                raise fail(path, f"'{name}': nbytes {nbytes} does not match shape {shape} {dtype}")
            if begin + nbytes > size:
                raise fail(path, f"'{name}': bytes {begin}..{begin + nbytes} lie outside its {size}-byte shard")
            spans.append((begin, begin + nbytes, name))
        spans.sort()
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise fail(path, f"'{a}' and '{b}' overlap in {shard['dataPath']}")


def check_shards(weights_dir: Path, index: dict | None = None, md5: bool = False) -> None:
    """Every shard exists with the size (and optionally md5) the index records."""
    weights_dir = Path(weights_dir)
    index = index or read_index(weights_dir)
    for shard in index["records"]:
        path = member(weights_dir, shard["dataPath"], weights_dir / INDEX)
        if not regular_file(weights_dir, path):
            raise fail(path, "shard listed in tensor-cache.json is missing")
        size = path.stat().st_size
        if size != shard["nbytes"]:
            raise fail(path, f"shard has {size} bytes, tensor-cache.json says {shard['nbytes']}")
        if md5 and shard.get("md5sum"):
            digest = hashlib.md5()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
            if digest.hexdigest() != shard["md5sum"]:
                raise fail(path, "md5 does not match tensor-cache.json (the shard is corrupt)")


def load_tensors(weights_dir: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read tensors back as numpy arrays (all, or those in ``names``)."""
    weights_dir = Path(weights_dir)
    out = {}
    for shard in read_index(weights_dir)["records"]:
        for rec in shard["records"]:
            if names is not None and rec["name"] not in names:
                continue
            raw = np.fromfile(weights_dir / shard["dataPath"], dtype=np.uint8, count=rec["nbytes"],
                              offset=rec["byteOffset"])
            if rec["format"] == "f32-to-bf16" and rec["dtype"] == "float32":
                arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = raw.view(np.dtype(rec["dtype"]))
            out[rec["name"]] = arr.reshape(rec["shape"])
    return out
