"""A MiniCPM checkpoint directory in Hugging Face layout, read lazily tensor by tensor."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.formats import pytorch_bin as pt
from mcpm_mobile.formats import safetensors_io as st
from mcpm_mobile.model.config import MiniCPMConfig

INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class Checkpoint:
    """Config, tensor index and tokenizer files of one checkpoint. Tensors are memory-mapped on demand."""

    def __init__(self, model_dir: Path | str):
        self.dir = Path(model_dir)
        if not self.dir.exists():
            raise fail(self.dir, "no such directory")
        if not self.dir.is_dir():
            raise fail(self.dir, "not a directory (expected a Hugging Face checkpoint directory)")
        self.config = MiniCPMConfig.from_file(self.dir / "config.json")
        self.files = self._weight_files()
        self.format = pt if self.files[0].suffix == ".bin" else st
        self.tensors: dict[str, st.TensorInfo | pt.TensorInfo] = {}
        for f in self.files:
            for name, info in self.format.read_header(f).items():
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                if name in self.tensors:
                    raise fail(f, f"tensor '{name}' is also in {self.tensors[name].file.name}")
                self.tensors[name] = info
        if self.config.tie_word_embeddings is None:
            self.config.tie_word_embeddings = "lm_head.weight" not in self.tensors
        self._check_shapes()

    def _weight_files(self) -> list[Path]:
        """Safetensors when present (what Hugging Face loads first), else PyTorch .bin; sharded or single."""
        for index_name, single, pattern in ((INDEX, "model.safetensors", "*.safetensors"),
                                            (BIN_INDEX, "pytorch_model.bin", "pytorch_model*.bin")):
            index = self.dir / index_name
            if index.is_file():
                return self._shards(index)
            if (self.dir / single).is_file():
                return [self.dir / single]
            found = sorted(self.dir.glob(pattern))
            if found:
                return found
        raise fail(self.dir, "no weights found (model.safetensors, pytorch_model.bin or a sharded index)")

    def _shards(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = {str(v) for v in weight_map.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise fail(index, f"cannot read the shard index: {type(e).__name__}")
        files = []
        for n in sorted(names):
            f = self.dir / n
            if "/" in n or "\\" in n or n.startswith("."):
                raise fail(index, f"shard name '{n}' is not a file in the checkpoint directory")
            if not f.is_file():
                raise fail(f, f"listed in {index.name} but missing")
            files.append(f)
        if not files:
            raise fail(index, "the shard index lists no files")
        return files

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        h, kv = c.hidden_size, c.num_key_value_heads * c.head_dim
        shapes = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (c.intermediate_size, h), p + "mlp.up_proj.weight": (c.intermediate_size, h),
                p + "mlp.down_proj.weight": (h, c.intermediate_size),
                p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            })
        if not c.tie_word_embeddings:
            shapes["lm_head.weight"] = (c.vocab_size, h)
        return shapes

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
        view = self.format.load(info)
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
