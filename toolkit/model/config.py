"""MiniCPM 1.x dense configuration, read from a Hugging Face ``config.json``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.model.rope import LongRoPE, parse_rope_scaling
from mcpm_mobile.support.jsonio import read_json

SUPPORTED_ARCH = "MiniCPMForCausalLM"
TEST_CHECKPOINT_NAME = "mcpm-mobile/tiny-minicpm"  # the _name_or_path `dev tiny-checkpoint` writes
TEST_CHECKPOINT_NOTICE = ("This is a random test checkpoint (mcpm-mobile dev tiny-checkpoint): every step runs for real, "
                          "but the text it generates is noise and no phone speed applies to it.")

SUPPORTED = "mcpm-mobile supports the dense text models MiniCPM 1.x, MiniCPM4 and MiniCPM4.1 (MiniCPMForCausalLM)"
# What other checkpoints look like, so the error can say what the user has and what is missing.
_OTHER_FAMILIES = {
    "minicpm3": "MiniCPM3 uses multi-head latent attention (MLA: kv_lora_rank/q_lora_rank projections), "
                f"which mcpm-mobile has no kernels for; {SUPPORTED}",
    "minicpmv": f"MiniCPM-V is a vision-language model (its vision encoder and resampler are not supported); {SUPPORTED}",
    "minicpmo": f"MiniCPM-o is an omni-modal model (its vision, audio and speech modules are not supported); "
                f"{SUPPORTED}",
}


@dataclass
class MiniCPMConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    # Defaults for keys a config.json leaves out: those of OpenBMB's configuration_minicpm.py, the code
    # transformers runs for MiniCPMForCausalLM (trust_remote_code); every release sets them (docs/checkpoints.md)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    scale_emb: float = 1.0
    scale_depth: float = 1.0
    dim_model_base: float = 1  # int in every release; MLC reads it as an int
    tie_word_embeddings: bool | None = None  # None: decided by the presence of lm_head.weight
    bos_token_id: int = 1
    eos_token_id: int | list[int] = 2
    torch_dtype: str = "bfloat16"
    hidden_act: str = "silu"
    rope_scaling: dict | None = None  # normalised LongRoPE entry (see mcpm_mobile.model.rope), or None
    name_or_path: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def residual_scale(self) -> float:
        """Each residual branch is multiplied by this (muP)."""
        return self.scale_depth / math.sqrt(self.num_hidden_layers)

    @property
    def logit_scale(self) -> float:
        """The final hidden state is divided by ``hidden_size / dim_model_base`` (HF semantics)."""
        return self.hidden_size / self.dim_model_base

    @property
    def longrope(self) -> LongRoPE | None:
        if not self.rope_scaling:
            return None
        return parse_rope_scaling(self.rope_scaling, {}, self.max_position_embeddings, self.head_dim, "config.json")

    @property
    def is_test_checkpoint(self) -> bool:
        """A random checkpoint from `mcpm-mobile dev tiny-checkpoint`: what it generates is noise."""
        return self.name_or_path == TEST_CHECKPOINT_NAME

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return list(e) if isinstance(e, (list, tuple)) else [e]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["head_dim"] = self.head_dim
        return d

    @classmethod
    def from_file(cls, path: Path) -> "MiniCPMConfig":
        path = Path(path)
        if not path.is_file():
            raise fail(path, "config.json not found (is this a Hugging Face checkpoint directory?)")
        raw = read_json(path)
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: dict, path: Path | str = "config.json") -> "MiniCPMConfig":
        _check_family(raw, path)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "name_or_path"}
        check_fields(raw, path)
        values = {k: raw[k] for k in known if k in raw and raw[k] is not None}
        values.setdefault("num_key_value_heads", raw["num_attention_heads"])
        # "_name_or_path" in config.json, "name_or_path" in mlc-chat-config.json's model_config
        name = raw.get("_name_or_path") or raw.get("name_or_path") or ""
        cfg = cls(**values, name_or_path=str(name),
                  extra={k: v for k, v in raw.items() if k not in known | {"_name_or_path", "name_or_path"}})
        cfg._validate(path)
        return cfg

    def _validate(self, path) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise fail(path, f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise fail(path, f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act != "silu":
            raise fail(path, f"hidden_act {_short(self.hidden_act)} is not supported (MiniCPM uses silu)")
        rope = parse_rope_scaling(self.rope_scaling, self.extra, self.max_position_embeddings, self.head_dim, path)
        self.rope_scaling = rope.to_config() if rope else None


# The schema: every field we read, its type and range. Bounds are far beyond any real model and stop sizes
# that would overflow a product or exhaust memory before a tensor is read.
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
INT_RANGES = {
    "vocab_size": (1, 1 << 22), "hidden_size": (1, 1 << 16), "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024), "num_key_value_heads": (1, 1024), "intermediate_size": (1, 1 << 18),
    "max_position_embeddings": (1, 1 << 22), "bos_token_id": (0, 1 << 22),
}
FLOAT_RANGES = {  # (low, high), low exclusive
    "rms_norm_eps": (0.0, 1.0), "rope_theta": (0.0, 1e12), "scale_emb": (0.0, 1e6), "scale_depth": (0.0, 1e6),
    "dim_model_base": (0.0, 1e9),
}
BOOLS = ("tie_word_embeddings",)
STRINGS = ("torch_dtype", "hidden_act")


def check_fields(raw: dict, path) -> None:
    """Types and ranges of every known field; one error naming the field and (a short form of) the value."""
    for key in REQUIRED:
        if raw.get(key) is None:
            raise fail(path, f"'{key}' is missing (a positive integer)")
    for key, (low, high) in INT_RANGES.items():
        value = raw.get(key)
        if value is not None and not (_is_int(value) and low <= value <= high):
            raise fail(path, f"'{key}' must be an integer in [{low}, {high}] (got {_short(value)})")
    for key, (low, high) in FLOAT_RANGES.items():
        value = raw.get(key)
        if value is not None and not (_is_number(value) and low < value <= high):
            raise fail(path, f"'{key}' must be a finite number in ({low:g}, {high:g}] (got {_short(value)})")
    for key in BOOLS:
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            raise fail(path, f"'{key}' must be true or false (got {_short(raw[key])})")
    for key in STRINGS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise fail(path, f"'{key}' must be a string (got {_short(raw[key])})")
    eos = raw.get("eos_token_id")
    if eos is not None and not (_is_int(eos) or (isinstance(eos, list) and eos and all(map(_is_int, eos)))):
        raise fail(path, f"'eos_token_id' must be a token id or a non-empty list of them (got {_short(eos)})")
    for e in ([] if eos is None else eos if isinstance(eos, list) else [eos]):
        if not 0 <= e < raw["vocab_size"]:
            raise fail(path, f"'eos_token_id' {e} is outside the vocabulary (vocab_size {raw['vocab_size']})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value, limit: int = 40) -> str:
    """A config value for a message: never more than ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_family(raw: dict, path) -> None:
    archs = [str(a) for a in raw.get("architectures") or [] if isinstance(a, str)]
    model_type = str(raw.get("model_type", "")).lower()
    if model_type in _OTHER_FAMILIES:
        raise fail(path, _OTHER_FAMILIES[model_type])
    if any("MiniCPMO" in a for a in archs) or "audio_config" in raw or "tts_config" in raw:
        raise fail(path, _OTHER_FAMILIES["minicpmo"])
    if any("MiniCPMV" in a for a in archs) or "vision_config" in raw:
        raise fail(path, _OTHER_FAMILIES["minicpmv"])
    if any("MiniCPM3" in a for a in archs) or "kv_lora_rank" in raw:
        raise fail(path, _OTHER_FAMILIES["minicpm3"])
    experts = raw.get("num_experts")
    if isinstance(experts, int) and experts > 0:
        raise fail(path, f"MiniCPM-MoE ({experts} experts, {_short(raw.get('num_experts_per_tok'))} per token) "
                         f"needs expert routing, which mcpm-mobile does not implement; {SUPPORTED}")
    act = str(raw.get("hidden_act", "silu")).lower()
    if "fatrelu" in act:
        raise fail(path, "MiniCPM-S uses the FATReLU activation (a thresholded ReLU for sparse FFNs) where "
                         f"mcpm-mobile's kernels implement SiLU; {SUPPORTED}")
    if SUPPORTED_ARCH not in archs and model_type != "minicpm":
        what = ", ".join(_short(a) for a in archs[:3]) or "no architectures"
        raise fail(path, f"not a MiniCPM checkpoint ({what}, model_type {_short(model_type)}); {SUPPORTED}")
