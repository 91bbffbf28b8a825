"""Rotary position embedding, plain or LongRoPE, as OpenBMB's ``modeling_minicpm.py`` computes it.

``MiniCPMLongRoPE`` divides the rotary frequencies per dimension pair by a factor and multiplies cos
and sin by ``sqrt(1 + ln(max_pos / original_max_pos) / ln(original_max_pos))``. It builds its table
once, for ``max_position_embeddings`` positions, with the long factors when ``max_position_embeddings``
exceeds ``original_max_position_embeddings`` and the short ones otherwise, so one set of factors applies
at every position a model runs at. :attr:`LongRoPE.factors` is that set; every engine we export to is
made to apply it (see docs/longrope.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mcpm_mobile.errors import fail

ROPE_TYPE = "longrope"


@dataclass(frozen=True)
class LongRoPE:
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    max_position_embeddings: int

    @property
    def uses_long(self) -> bool:
        return self.max_position_embeddings > self.original_max_position_embeddings

    @property
    def factors(self) -> np.ndarray:
        """float64 [head_dim / 2]: the divisors of the frequencies the reference applies."""
        return np.array(self.long_factor if self.uses_long else self.short_factor, np.float64)

    @property
    def amplitude(self) -> float:
        """The cos/sin multiplier (1 when the two context lengths are equal)."""
        orig = self.original_max_position_embeddings
        return math.sqrt(1 + math.log(self.max_position_embeddings / orig) / math.log(orig))

    def to_config(self) -> dict:
        """The normalised ``rope_scaling`` entry of config.json."""
        return {"rope_type": ROPE_TYPE, "short_factor": list(self.short_factor),
                "long_factor": list(self.long_factor),
                "original_max_position_embeddings": self.original_max_position_embeddings}


def parse_rope_scaling(raw, top_level: dict, max_position_embeddings: int, head_dim: int, path) -> LongRoPE | None:
    """Validate config.json's ``rope_scaling``; None for plain RoPE. Errors never echo the factor lists."""
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise fail(path, f"rope_scaling must be an object (got {type(raw).__name__})")
    kind = raw.get("rope_type", raw.get("type"))
    if kind == "default" and not {"short_factor", "long_factor"} & set(raw):
        return None
    if kind != ROPE_TYPE:
        shown = repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "missing or not a name"
        raise fail(path, f"rope_scaling type {shown} is not supported (mcpm-mobile implements 'longrope', "
                         "the scaling MiniCPM4/4.1 use)")
    half = head_dim // 2
    factors = {}
    for key in ("short_factor", "long_factor"):
        values = raw.get(key)
        if not isinstance(values, list):
            raise fail(path, f"rope_scaling.{key} must be a list of {half} numbers (head_dim / 2)")
        if len(values) != half:
            raise fail(path, f"rope_scaling.{key} has {len(values)} values; head_dim {head_dim} needs {half}")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise fail(path, f"rope_scaling.{key}[{i}] is {str(v)[:20]}; factors must be positive finite "
                                 "numbers")
        factors[key] = tuple(float(v) for v in values)
    orig = raw.get("original_max_position_embeddings", top_level.get("original_max_position_embeddings"))
    if isinstance(orig, bool) or not isinstance(orig, int) or orig <= 1:
        raise fail(path, "rope_scaling.original_max_position_embeddings must be an integer > 1 "
                         f"(got {str(orig)[:20]})")
    if max_position_embeddings < orig:
        raise fail(path, f"max_position_embeddings {max_position_embeddings} is below rope_scaling."
                         f"original_max_position_embeddings {orig}: OpenBMB's code would shrink cos/sin there "
                         "while transformers and llama.cpp would not, so mcpm-mobile does not guess")
    return LongRoPE(factors["short_factor"], factors["long_factor"], orig, max_position_embeddings)


def inv_freq(head_dim: int, theta: float, longrope: LongRoPE | None = None) -> np.ndarray:
    """float64 [head_dim / 2]: ``theta^(-2i/d)``, divided by the LongRoPE factors."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return inv if longrope is None else inv / longrope.factors


def cos_sin(positions: int, head_dim: int, theta: float, longrope: LongRoPE | None = None):
    """(cos, sin), float64 [positions, head_dim / 2], amplitude included."""
    angles = np.outer(np.arange(positions, dtype=np.float64), inv_freq(head_dim, theta, longrope))
    amp = 1.0 if longrope is None else longrope.amplitude
    return np.cos(angles) * amp, np.sin(angles) * amp
