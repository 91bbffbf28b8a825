"""A MiniCPM checkpoint directory in Hugging Face layout, read lazily tensor by tensor."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.param_map import LM_HEAD, hf_shapes
from mcpm_mobile.support import safetensors_io as st
from mcpm_mobile.support.jsonio import read_json

INDEX = "model.safetensors.index.json"
CONVERT_HINT = ("convert it to safetensors first, e.g. python -c \"from transformers import AutoModelForCausalLM as M; "
                "M.from_pretrained('DIR', trust_remote_code=True).save_pretrained('DIR', safe_serialization=True)\"")


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
        config = MiniCPMConfig.from_file(self.dir / "config.json")
        self.files = self._weight_files()
        self.tensors: dict[str, st.TensorInfo] = {}
        for f in self.files:
            for name, info in st.read_header(f).items():
                if name in self.tensors:
                    raise fail(f, f"tensor '{name}' is also in {self.tensors[name].file.name}")
                self.tensors[name] = info
        self.config = with_tied_decided(config, self.tensors)
        self._check_shapes()

    @property
    def tied(self) -> bool:
        return bool(self.config.tie_word_embeddings)


    def _weight_files(self) -> list[Path]:
        index = self.dir / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise fail(index, f"cannot read the shard index: {e}")
            files = sorted({self.dir / v for v in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise fail(f, f"listed in {INDEX} but missing")
            return files
        single = self.dir / "model.safetensors"
        if single.is_file():
            return [single]
        others = sorted(self.dir.glob("*.safetensors"))
        if others:
            return others
        if list(self.dir.glob("pytorch_model*.bin")):
            raise fail(self.dir, f"only PyTorch .bin weights found; mcpm-mobile reads safetensors: {CONVERT_HINT}")
        raise fail(self.dir, "no model.safetensors or model.safetensors.index.json found")

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return hf_shapes(self.config)

    def _check_shapes(self) -> None:
        for name, shape in self.expected_shapes().items():
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
        view = st.load(info)
        if rows is not None:
            view = view[rows]
        arr = view.astype(np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise fail(info.file, f"tensor '{name}' contains {bad} NaN/Inf values")
        return arr

    @property
    def weight_bytes(self) -> int:
        return sum(self.tensors[n].nbytes for n in self.expected_shapes())

    def fingerprint(self) -> str:
        """sha256 over config.json and the safetensors headers: identifies the checkpoint cheaply."""
        h = hashlib.sha256((self.dir / "config.json").read_bytes())
        for f in self.files:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(n))
        return h.hexdigest()


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
    index = model_dir / INDEX
    if index.is_file():
        names = read_json(index).get("weight_map", {})
    else:
        names = {n for f in sorted(model_dir.glob("*.safetensors")) for n in st.read_header(f)}
    return with_tied_decided(config, names)
