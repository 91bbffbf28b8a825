"""``Weights``: an MLC weights directory (``mlc-chat-config.json``, ``tensor-cache.json``, shards, tokenizer).

Written by ``quantize`` (:func:`mcpm_mobile.quantize.convert.quantize`), read here once: the model
config, its one :class:`~mcpm_mobile.model.quantization.Quantization`, the chat config and the
tensor index. ``check_library`` says whether a compiled library's ``_metadata`` belongs to it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.formats import chat_config, tensor_cache
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.quantization import QUANTIZATIONS, Quantization

# model_config keys a library records (metadata "mcpm.model_config") to refuse weights of another model
LIBRARY_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                       "intermediate_size", "rms_norm_eps", "rope_theta", "scale_emb", "scale_depth",
                       "dim_model_base", "max_position_embeddings", "rope_scaling")


@dataclass
class Weights:
    dir: Path
    chat_config: dict
    config: MiniCPMConfig  # tie_word_embeddings decided
    quantization: Quantization
    index: dict | None  # tensor-cache.json; None when only the configs are there (compiling needs no tensors)
    summary: dict = field(default_factory=dict)  # sizes and timing, when just written by quantize

    @classmethod
    def of(cls, source: "Weights | Path | str") -> "Weights":
        return source if isinstance(source, cls) else cls.read(source)

    @classmethod
    def read(cls, weights_dir: Path | str) -> "Weights":
        weights_dir = Path(weights_dir)
        if not weights_dir.is_dir():
            raise fail(weights_dir, "no such weights directory (expected the output of `mcpm-mobile quantize`)")
        chat = chat_config.read(weights_dir)
        path = weights_dir / chat_config.FILENAME
        if chat.get("model_type", chat_config.MODEL_TYPE) != chat_config.MODEL_TYPE:
            raise fail(path, f"model_type '{chat['model_type']}' is not supported (only '{chat_config.MODEL_TYPE}')")
        qname = chat["quantization"]
        if qname not in QUANTIZATIONS:
            raise fail(path, f"unknown quantization '{qname}' (supported: {', '.join(QUANTIZATIONS)})")
        if not isinstance(chat["model_config"], dict):
            raise fail(path, "model_config must be a JSON object")
        raw = dict(chat["model_config"], model_type=chat_config.MODEL_TYPE)
        config = MiniCPMConfig.from_dict(raw, path)
        index = tensor_cache.read_index(weights_dir) if tensor_cache.find_index(weights_dir) else None
        if config.tie_word_embeddings is None:
            names = _record_names(index) if index else set()
            config = dataclasses.replace(config, tie_word_embeddings=not any(n.startswith("lm_head.") for n in names))
        return cls(weights_dir, chat, config, QUANTIZATIONS[qname], index)

    @property
    def model_type(self) -> str:
        return self.chat_config.get("model_type", chat_config.MODEL_TYPE)

    @property
    def tied(self) -> bool:
        return bool(self.config.tie_word_embeddings)

    @property
    def is_test_checkpoint(self) -> bool:
        return self.config.is_test_checkpoint

    @property
    def context_window_size(self) -> int:
        return int(self.chat_config.get("context_window_size") or self.config.max_position_embeddings)

    @property
    def prefill_chunk_size(self) -> int:
        return int(self.chat_config.get("prefill_chunk_size") or min(self.context_window_size, 2048))

    @property
    def max_batch_size(self) -> int:
        return int(self.chat_config.get("model_config", {}).get("max_batch_size") or 1)

    def require_index(self) -> dict:
        if self.index is None:
            raise fail(self.dir / tensor_cache.INDEX, "not found (is this an mcpm-mobile/MLC weights directory?)")
        return self.index

    @property
    def records(self) -> dict[str, dict]:
        """Every stored tensor's record (name, shape, dtype, nbytes) by name."""
        return {r["name"]: r for shard in self.require_index()["records"] for r in shard["records"]}

    @property
    def param_bytes(self) -> int:
        return int(sum(shard["nbytes"] for shard in self.require_index()["records"]))

    def check(self, md5: bool = False) -> None:
        """What a package needs: every field MLC's runtime reads, every shard with its size (and md5)."""
        chat_config.check_fields(self.chat_config, self.dir / chat_config.FILENAME)
        tensor_cache.check_shards(self.dir, self.require_index(), md5=md5)

    def check_library(self, metadata: dict, lib: Path) -> None:
        """Refuse a library (its ``_metadata``) built for another model or quantization, saying which."""
        for key, ours in (("model_type", self.model_type), ("quantization", self.quantization.name)):
            if metadata.get(key) != ours:
                raise fail(lib, f"library is for {key} '{metadata.get(key)}' but {self.dir} holds '{ours}' weights; "
                                "compile the library again for these weights")
        recorded = (metadata.get("mcpm") or {}).get("model_config") or {}
        for key, value in recorded.items():
            if not hasattr(self.config, key) or value == getattr(self.config, key):
                continue
            if key == "rope_scaling":  # None (plain RoPE) counts; the factor lists are too long to print
                raise fail(lib, f"library was compiled for a different model (its rope_scaling differs from that "
                                f"of the weights in {self.dir})")
            raise fail(lib, f"library was compiled for a different model ({key}={value}, the weights in "
                            f"{self.dir} have {getattr(self.config, key)})")
        stored = self.records
        index = self.dir / tensor_cache.INDEX
        for p in metadata["params"]:
            rec = stored.get(p["name"])
            if rec is None:
                raise fail(index, f"parameter '{p['name']}' required by {lib.name} is missing (a different model)")
            if list(rec["shape"]) != list(p["shape"]) or rec["dtype"] != p["dtype"]:
                raise fail(index, f"parameter '{p['name']}' is {rec['shape']} {rec['dtype']}, {lib.name} expects "
                                  f"{p['shape']} {p['dtype']} (a different model)")


def _record_names(index: dict) -> set[str]:
    return {r["name"] for shard in index["records"] for r in shard["records"]}
