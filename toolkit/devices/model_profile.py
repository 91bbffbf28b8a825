"""What a model needs from a phone: weight bytes, KV bytes per token, workspace and compute per token.

A profile comes from a preset (``ModelProfile.from_preset("minicpm-2b", "q4f16_1")``) or from a path
(:func:`model_profile_from_path`): a Hugging Face checkpoint, a weights directory written by
``quantize`` (real shard bytes from ``tensor-cache.json``), a built package directory, or a compiled
library next to its ``<name>.metadata.json`` (whose ``memory_usage`` gives the workspace); or from
the artifacts themselves (:meth:`ModelProfile.from_weights`), as ``build`` does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mcpm_mobile.devices import memory
from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.formats import chat_config, tensor_cache
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.model.checkpoint import read_config
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.quantization import DEFAULT, GGUF_TYPES, QUANTIZATIONS, Quantization
from mcpm_mobile.model.releases import RELEASES
from mcpm_mobile.support.jsonio import read_json

DEFAULT_PREFILL_CHUNK = 128
TEST_CHECKPOINT_NOTE = ("a random test checkpoint (mcpm-mobile dev tiny-checkpoint): its speeds say nothing about "
                        "a real model")
WEIGHTS_INDEXES = (tensor_cache.INDEX, tensor_cache.OLD_INDEX)
CHAT_CONFIG = chat_config.FILENAME
SEARCH_DEPTH = 3
LIBRARY_SUFFIXES = (".tar.gz", ".tar", ".so", ".a", ".dylib", ".wasm", ".dll")

# The one preset table (issue 17 item 8): dimensions from each release's config.json, with the source in
# PRESET_SOURCES and the fields no stored source confirmed in PRESET_UNVERIFIED. The realckpt stand-ins
# must reproduce these numbers.
MODEL_PRESETS = {
    "minicpm-2b": dict(vocab_size=122753, hidden_size=2304, num_hidden_layers=40, num_attention_heads=36,
                       num_key_value_heads=36, intermediate_size=5760, tie_word_embeddings=True,
                       max_position_embeddings=4096),
    "minicpm-1b": dict(vocab_size=73440, hidden_size=1536, num_hidden_layers=52, num_attention_heads=24,
                       num_key_value_heads=8, intermediate_size=3840, tie_word_embeddings=True,
                       max_position_embeddings=4096),
    "minicpm4-8b": dict(vocab_size=73448, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=2, intermediate_size=16384, tie_word_embeddings=False,
                        max_position_embeddings=32768),
    "minicpm4.1-8b": dict(vocab_size=73448, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=2, intermediate_size=16384, tie_word_embeddings=False,
                          max_position_embeddings=32768),
}
# Releases whose dimensions come from model/releases.py (the table the stand-ins use; docs/checkpoints.md)
MODEL_PRESETS.update({name: RELEASES[release].preset() for name, release in (
    ("minicpm-2b-128k", "MiniCPM-2B-128k"), ("minicpm4-0.5b", "MiniCPM4-0.5B"))})
MODEL_PRESETS["minicpm4.1-8b"]["max_position_embeddings"] = RELEASES["MiniCPM4.1-8B"].config["max_position_embeddings"]
PRESET_SOURCES = {
    "minicpm-2b": "mlc-llm python/mlc_llm/model/model_preset.py minicpm_2b (devices.md section 3a); "
                  "huggingface.co/openbmb/MiniCPM-2B-dpo-bf16 config.json",
    "minicpm-1b": "huggingface.co/openbmb/MiniCPM-1B-sft-bf16 config.json (as mirrored by PrunaAI and "
                  "ProSparse-MiniCPM-1B configs: 52 layers, 24 heads, 8 KV heads, vocab 73440)",
    "minicpm4-8b": "huggingface.co/openbmb/MiniCPM4-8B config.json (refs/pr/9): hidden 4096, 32 layers, 32 heads, "
                   "2 KV heads, intermediate 16384, max_position_embeddings 32768",
    "minicpm4.1-8b": "taken as MiniCPM4-8B's dimensions: MiniCPM4.1-8B is the same architecture retrained "
                     "(not confirmed against its own config.json); max_position_embeddings 65536 as a FastDeploy "
                     "MiniCPM4.1 loader copies it from config.json (docs/checkpoints.md)",
    "minicpm-2b-128k": "MiniCPM-2B's dimensions with the vocabulary (127660) and untied head of its model card "
                       "(huggingface.co/openbmb/MiniCPM-2B-128k); 131072 positions (docs/checkpoints.md)",
    "minicpm4-0.5b": "a third-party test reproducing its config.json (hidden 1024, 24 layers, 16 heads, 2 KV heads, "
                     "intermediate 4096, vocab 73448; docs/checkpoints.md)",
}
PRESET_UNVERIFIED = {
    "minicpm4-8b": ("vocab_size", "tie_word_embeddings"),
    "minicpm4.1-8b": ("vocab_size", "tie_word_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "intermediate_size", "max_position_embeddings"),
    "minicpm-2b-128k": ("max_position_embeddings",),
    "minicpm4-0.5b": ("tie_word_embeddings", "max_position_embeddings"),
}


def quantization_named(name: str) -> Quantization:
    """An MLC quantization (q4f16_1, q0f16, ...) or, for measured llama.cpp rows, a GGUF type (q4_1, ...)."""
    q = QUANTIZATIONS.get(name) or GGUF_TYPES.get(name)
    if q is None:
        raise MCPMError(f"unknown quantization '{name}'; choose one of {', '.join(QUANTIZATIONS)}")
    return q


ARCH_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "tie_word_embeddings", "max_position_embeddings")  # what a profile uses


def preset_config(name: str) -> MiniCPMConfig:
    """The model config of a preset: the profile works on the same object a checkpoint gives."""
    return MiniCPMConfig(**MODEL_PRESETS[name])


def family(config: MiniCPMConfig) -> str | None:
    """The preset with these dimensions, if any (used to show measured figures for the same model)."""
    for name, preset in MODEL_PRESETS.items():
        if all(getattr(config, k) == v for k, v in preset.items() if k != "max_position_embeddings"):
            return name
    return None


def weight_bytes(a: MiniCPMConfig, q: Quantization) -> tuple[int, int]:
    """(total weight bytes, bytes read per decoded token) for a MiniCPM/Llama-layout model.

    A decode step reads every layer and the lm_head; the input embedding contributes one row, so
    an untied embedding table does not count as read. Tied, it is read whole as the lm_head.
    """
    h, qdim, kvdim = a.hidden_size, a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
    layer = (q.matrix_bytes(qdim, h) + 2 * q.matrix_bytes(kvdim, h) + q.matrix_bytes(h, qdim)
             + 2 * q.matrix_bytes(a.intermediate_size, h) + q.matrix_bytes(h, a.intermediate_size)
             + 2 * h * q.dtype_bytes)
    embedding = q.matrix_bytes(a.vocab_size, h)
    total = embedding + a.num_hidden_layers * layer + h * q.dtype_bytes
    if a.tie_word_embeddings:
        return total, total
    return total + embedding, total


def params_per_token(a: MiniCPMConfig) -> int:
    """Weights multiplied per decoded token (each costs 2 FLOPs): all layers plus the lm_head."""
    h, qdim, kvdim = a.hidden_size, a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
    layer = 2 * qdim * h + 2 * kvdim * h + 3 * a.intermediate_size * h
    return a.num_hidden_layers * layer + a.vocab_size * h


@dataclass
class ModelProfile:
    name: str
    quantization: str
    arch: MiniCPMConfig
    weight_bytes: int
    weights_read_bytes: int
    weight_source: str
    kv_dtype_bytes: int
    workspace_bytes: int
    workspace_source: str
    context_window: int | None = None
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> str | None:
        return family(self.arch)

    @property
    def kv_bytes_per_token(self) -> int:
        a = self.arch
        return memory.kv_cache_bytes(a.num_hidden_layers, a.num_key_value_heads, a.head_dim, 1, self.kv_dtype_bytes)

    def kv_bytes(self, tokens: int) -> int:
        return self.kv_bytes_per_token * tokens

    @property
    def params_per_token(self) -> int:
        return params_per_token(self.arch)

    @property
    def max_context(self) -> int:
        return self.arch.max_position_embeddings

    @property
    def default_context(self) -> int:
        return self.context_window or min(2048, self.max_context)

    def context_for(self, os: str) -> int:
        """The context to judge a phone at: the artifact's own, else the per-OS default (see memory.py)."""
        return self.context_window or min(memory.default_context(os), self.max_context)

    def describe(self) -> str:
        size = f"{self.weight_bytes / 1e9:.2f} GB" if self.weight_bytes >= 1e8 else f"{self.weight_bytes / 1e6:.2f} MB"
        return f"{self.name} {self.quantization} ({size} weights, {self.weight_source})"

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "quantization": self.quantization,
                "weight_bytes": self.weight_bytes, "weights_read_bytes": self.weights_read_bytes,
                "weight_source": self.weight_source, "kv_bytes_per_token": self.kv_bytes_per_token,
                "workspace_bytes": self.workspace_bytes, "workspace_source": self.workspace_source,
                "context_window": self.context_window, "max_context": self.max_context, "path": self.path,
                "architecture": {**{k: getattr(self.arch, k) for k in ARCH_KEYS}, "head_dim": self.arch.head_dim}, "notes": self.notes}

    @classmethod
    def from_arch(cls, arch: MiniCPMConfig, quantization: str, name: str, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                  **kwargs) -> "ModelProfile":
        q = quantization_named(quantization)
        total, read = weight_bytes(arch, q)
        values = dict(weight_bytes=total, weights_read_bytes=read,
                      weight_source=f"computed from the config at {q.bits_per_weight:g} bits/weight",
                      workspace_bytes=memory.estimate_workspace(arch, q.dtype_bytes, prefill_chunk),
                      workspace_source=f"estimate (prefill chunk {prefill_chunk}; no compiled-library metadata)")
        values.update(kwargs)
        return cls(name=name, quantization=quantization, arch=arch, kv_dtype_bytes=q.dtype_bytes, **values)

    @classmethod
    def from_preset(cls, name: str, quantization: str = DEFAULT) -> "ModelProfile":
        if name not in MODEL_PRESETS:
            raise MCPMError(f"unknown preset '{name}'; choose one of {', '.join(MODEL_PRESETS)}")
        profile = cls.from_arch(preset_config(name), quantization, name)
        if PRESET_UNVERIFIED.get(name):
            profile.notes.append(f"preset {name}: {', '.join(PRESET_UNVERIFIED[name])} not confirmed in a stored "
                                 f"source ({PRESET_SOURCES[name]})")
        return profile

    @classmethod
    def from_config(cls, config: MiniCPMConfig, quantization: str, model_dir: Path) -> "ModelProfile":
        """A checkpoint's profile (``config`` with tie_word_embeddings decided) at ``quantization``."""
        profile = cls.from_arch(config, quantization, family(config) or Path(model_dir).name, path=str(model_dir))
        if config.is_test_checkpoint:
            profile.notes.append(TEST_CHECKPOINT_NOTE)
        return profile

    @classmethod
    def from_weights(cls, weights: Weights, workspace: tuple[str, int] | None = None) -> "ModelProfile":
        """The profile of quantized weights: real shard bytes; ``workspace``: (source, bytes) of a
        compiled library's largest ``memory_usage`` entry (else an estimate)."""
        arch = weights.config
        context = weights.chat_config.get("context_window_size")
        chunk = weights.chat_config.get("prefill_chunk_size") or DEFAULT_PREFILL_CHUNK
        profile = cls.from_arch(arch, weights.quantization.name, family(arch) or weights.dir.name,
                                prefill_chunk=chunk, path=str(weights.dir),
                                context_window=context if isinstance(context, int) and context > 0 else None)
        if weights.index is not None:
            shards = weights.index["records"]
            embedding = sum(int(r["nbytes"]) for r in weights.records.values() if "embed_tokens" in r["name"])
            profile.weight_bytes = weights.param_bytes
            profile.weights_read_bytes = profile.weight_bytes - (0 if arch.tie_word_embeddings else embedding)
            profile.weight_source = f"{tensor_cache.find_index(weights.dir).name}: {len(shards)} shards"
        else:
            profile.notes.append(f"no tensor-cache.json in {weights.dir}; weight bytes computed from the config")
        if workspace:
            profile.workspace_source, profile.workspace_bytes = workspace
        if weights.is_test_checkpoint:
            profile.notes.append(TEST_CHECKPOINT_NOTE)
        return profile


def model_profile_from_path(path, quantization: str | None = None) -> ModelProfile:
    """Profile a HF checkpoint dir, an MLC weights dir, a built package dir, or a compiled library file.

    ``quantization`` applies to HF checkpoints (default q4f16_1); artifacts carry their own.
    """
    p = Path(path)
    if not p.exists():
        raise fail(p, "no such file or directory")
    if p.is_file():
        return _from_file(p, quantization)
    if (p / CHAT_CONFIG).is_file():
        return _from_weights_dir(p, _find_metadata([p, p.parent, p.parent.parent]))
    if (p / "config.json").is_file():
        return _from_checkpoint(p, quantization or DEFAULT)
    found = _find_weight_dirs(p)
    if not found:
        raise fail(p, f"no config.json or {CHAT_CONFIG} here or below (expected a checkpoint, weights or package "
                      "directory)")
    if len(found) > 1:
        raise fail(p, "several weight directories: " + ", ".join(str(d.relative_to(p)) for d in found)
                   + "; pass one of them")
    return _from_weights_dir(found[0], _find_metadata([found[0], p, p / "lib"]))


def _from_file(p: Path, quantization: str | None) -> ModelProfile:
    if p.name == CHAT_CONFIG or p.name in WEIGHTS_INDEXES:
        return model_profile_from_path(p.parent, quantization)
    if p.name == "config.json":
        return _from_checkpoint(p.parent, quantization or DEFAULT)
    meta_path = p if p.name.endswith("metadata.json") else p.with_name(_library_stem(p.name) + ".metadata.json")
    if not meta_path.is_file():
        raise fail(p, f"no {meta_path.name} beside the library; pass the package or weights directory instead")
    meta = read_json(meta_path)
    if not isinstance(meta.get("memory_usage"), dict):
        raise fail(meta_path, "no 'memory_usage' in the library metadata")
    root = p.parent.parent if p.parent.name == "lib" else p.parent
    found = _find_weight_dirs(root)
    if len(found) == 1:
        return _from_weights_dir(found[0], (meta_path, meta))
    raise fail(p, f"cannot find the weights directory for this library under {root} "
                  f"({'several found' if found else 'none found'}); pass the weights directory")


def _library_stem(name: str) -> str:
    for suffix in LIBRARY_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _from_checkpoint(d: Path, quantization: str) -> ModelProfile:
    return ModelProfile.from_config(read_config(d), quantization, d)


def _from_weights_dir(d: Path, metadata: tuple[Path, dict] | None) -> ModelProfile:
    workspace = None
    if metadata:
        meta_path, meta = metadata
        usage = [v for v in meta["memory_usage"].values() if isinstance(v, (int, float))]
        workspace = (f"{meta_path.name}: largest memory_usage entry", int(max(usage, default=0)))
    return ModelProfile.from_weights(Weights.read(d), workspace)


def _find_weight_dirs(root: Path) -> list[Path]:
    found = []
    for depth in range(SEARCH_DEPTH + 1):
        found += [f.parent for f in sorted(root.glob("/".join(["*"] * depth + [CHAT_CONFIG])))]
    return found


def _find_metadata(roots: list[Path]) -> tuple[Path, dict] | None:
    """The compiled library's metadata with the largest workspace among ``roots`` and their lib/ folders."""
    best = None
    for root in roots:
        for f in sorted({*root.glob("*metadata.json"), *root.glob("lib/*metadata.json")}):
            try:
                meta = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            usage = meta.get("memory_usage") if isinstance(meta, dict) else None
            if isinstance(usage, dict) and usage:
                size = max((v for v in usage.values() if isinstance(v, (int, float))), default=0)
                if best is None or size > best[0]:
                    best = (size, f, meta)
    return (best[1], best[2]) if best else None
