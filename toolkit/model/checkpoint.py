"""A MiniCPM checkpoint directory in Hugging Face layout, read lazily tensor by tensor.

Weights: safetensors when present (what Hugging Face loads first), else PyTorch ``.bin`` (torch.save's zip
format, read without torch: support/pytorch_bin.py); single files or shards with an index.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.param_map import LM_HEAD, hf_shapes
from mcpm_mobile.support import pytorch_bin as pt
from mcpm_mobile.support import safetensors_io as st
from mcpm_mobile.support.jsonio import read_json
from mcpm_mobile.support.paths import member, regular_file

INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# (index, single file, shard pattern, reader) in the order Hugging Face prefers them
LAYOUTS = ((INDEX, "model.safetensors", "*.safetensors", st),
           (BIN_INDEX, "pytorch_model.bin", "pytorch_model*.bin", pt))
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older transformers saved into .bin state dicts
ROW_CHUNK_BYTES = 64 << 20  # float32 bytes of source rows a converter holds at once


class Checkpoint:
    """Config, tensor index and tokenizer files of one checkpoint. Tensors are memory-mapped on demand.

    ``config`` is the checkpoint's config with ``tie_word_embeddings`` decided (when config.json
    leaves it out, by whether ``lm_head.weight`` is stored).
    """

    @classmethod
    def of(cls, source: "Checkpoint | Path | str") -> "Checkpoint":
        return source if isinstance(source, cls) else cls(source)

    def __init__(self, model_dir: Path | str):
        self.dir = Path(model_dir)
        if not self.dir.exists():
            raise fail(self.dir, "no such directory")
        if not self.dir.is_dir():
            raise fail(self.dir, "not a directory (expected a Hugging Face checkpoint directory)")
        regular_file(self.dir, self.dir / "config.json")
        config = MiniCPMConfig.from_file(self.dir / "config.json")
        self.files, self.format = _weight_files(self.dir)
        self.tensors: dict[str, st.TensorInfo | pt.TensorInfo] = {}
        for f in self.files:
            for name, info in self.format.read_header(f).items():
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                if name in self.tensors:
                    raise fail(f, f"tensor '{name}' is also in {self.tensors[name].file.name}")
                self.tensors[name] = info
        self.config = with_tied_decided(config, self.tensors)
        self._check_shapes()

    @property
    def tied(self) -> bool:
        return bool(self.config.tie_word_embeddings)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return hf_shapes(self.config)

    def _check_shapes(self) -> None:
        expected = self.expected_shapes()
        unused = sorted(n for n in self.tensors if n not in expected and n != LM_HEAD)
        if unused:
            c = self.config
            raise fail(self.tensors[unused[0]].file,
                       f"tensor '{unused[0]}' is not used by config.json ({len(unused)} such; num_hidden_layers "
                       f"{c.num_hidden_layers}): the config and the weights disagree")
        for name, shape in expected.items():
            info = self.tensors.get(name)
            if info is None:
                raise fail(self.dir, f"missing tensor '{name}' (expected shape {list(shape)})")
            if tuple(info.shape) != shape:
                raise fail(info.file, f"tensor '{name}' has shape {list(info.shape)}, expected {list(shape)}")
            if info.dtype not in ("BF16", "F16", "F32"):
                raise fail(info.file, f"tensor '{name}' has dtype {info.dtype}; expected BF16, F16 or F32")

    def get(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Tensor ``name`` (optionally a row range) as float32, checked for NaN/Inf."""
        info = self.tensors[name]
        arr = self.format.load(info, rows).astype(np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise fail(info.file, f"tensor '{name}' contains {bad} NaN/Inf values")
        return arr

    def row_chunks(self, name: str) -> list[tuple[slice, int]]:
        """The row ranges converters stream tensor ``name`` in (at most ``ROW_CHUNK_BYTES`` as float32, at least
        one row), each with its share of the stored bytes (for progress)."""
        info = self.tensors[name]
        n = info.shape[0]
        step = max(1, ROW_CHUNK_BYTES // (4 * math.prod(info.shape[1:])))
        return [(slice(r, min(n, r + step)), info.nbytes * (min(n, r + step) - r) // n) for r in range(0, n, step)]

    def stored(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Tensor ``name`` (or a row range) as stored on disk, a private copy-on-write map of just those bytes:
        what a compiled kernel reads in place (``kernels/``); writes never reach the file."""
        return self.format.load(self.tensors[name], rows, private=True)

    @property
    def weight_bytes(self) -> int:
        return sum(self.tensors[n].nbytes for n in self.expected_shapes())

    def fingerprint(self) -> str:
        """sha256 over config.json and the tensor headers (.bin: the pickles): identifies the checkpoint cheaply."""
        h = hashlib.sha256((self.dir / "config.json").read_bytes())
        for f in self.files:
            if self.format is pt:
                pt.fingerprint(h, f)
                continue
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(n))
        return h.hexdigest()


def _weight_files(model_dir: Path) -> tuple[list[Path], object]:
    """(weight files, reader module): safetensors first, then PyTorch .bin; an index, a single file or shards."""
    for index_name, single, pattern, reader in LAYOUTS:
        index = model_dir / index_name
        if regular_file(model_dir, index):
            return _shards(model_dir, index), reader
        if regular_file(model_dir, model_dir / single):
            return [model_dir / single], reader
        found = sorted(model_dir.glob(pattern))
        if found:
            return [f for f in found if regular_file(model_dir, f)], reader
    raise fail(model_dir, "no weights found (model.safetensors, pytorch_model.bin or a sharded index)")


def _shards(model_dir: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise fail(index, f"cannot read the shard index: {type(e).__name__}")
    files = []
    for n in sorted(names, key=str):
        path = member(model_dir, n, index)
        if not regular_file(model_dir, path):
            raise fail(path, f"listed in {index.name} but missing")
        files.append(path)
    if not files:
        raise fail(index, "the shard index lists no files")
    return files


def with_tied_decided(config: MiniCPMConfig, tensor_names) -> MiniCPMConfig:
    """``config`` with ``tie_word_embeddings`` decided: as config.json says, else tied unless an
    ``lm_head.weight`` is stored (Hugging Face's default)."""
    if config.tie_word_embeddings is not None:
        return config
    return dataclasses.replace(config, tie_word_embeddings=LM_HEAD not in tensor_names)


def read_config(model_dir: Path | str) -> MiniCPMConfig:
    """The decided config of a checkpoint from config.json and the tensor names alone (no tensors
    need to be there: enough to profile a model)."""
    model_dir = Path(model_dir)
    config = MiniCPMConfig.from_file(model_dir / "config.json")
    names: set[str] | dict = set()
    for index_name, _, pattern, reader in LAYOUTS:
        if (model_dir / index_name).is_file():
            names = read_json(model_dir / index_name).get("weight_map", {})
            break
        files = sorted(model_dir.glob(pattern))
        if files:
            names = {n for f in files for n in reader.read_header(f)}
            break
    return with_tied_decided(config, names)
