"""Token sampling on the host: repetition penalty, temperature, top-p, greedy.

The temperature softmax itself runs in the model library (``softmax_with_temperature``, as in
MLC's runtime); everything here is numpy on one row of float32 logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

GREEDY_TEMPERATURE = 1e-5  # at or below this, sampling is argmax
MAX_TEMPERATURE = 100.0
PENALTY_RANGE = (0.01, 100.0)  # outside it logits overflow or the penalty inverts nothing useful


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None

    def validate(self) -> None:
        from mcpm_mobile.errors import MCPMError

        if self.max_tokens < 0:
            raise MCPMError(f"max tokens must be >= 0 (got {self.max_tokens})")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise MCPMError(f"temperature must be in [0, {MAX_TEMPERATURE:g}] (got {self.temperature})")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise MCPMError(f"top-p must be in (0, 1] (got {self.top_p})")
        if not (math.isfinite(self.repetition_penalty) and PENALTY_RANGE[0] <= self.repetition_penalty
                <= PENALTY_RANGE[1]):
            raise MCPMError(f"repetition penalty must be in [{PENALTY_RANGE[0]:g}, {PENALTY_RANGE[1]:g}] "
                            f"(got {self.repetition_penalty})")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise MCPMError(f"seed must be in [0, 2**63) (got {self.seed})")

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL / Hugging Face rule: a seen token's logit is divided by ``penalty`` if positive, else multiplied."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    logits = logits.copy()
    ids = np.unique(seen)
    vals = logits[ids]
    logits[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalise."""
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    keep = int(np.searchsorted(cum, top_p, side="left")) + 1
    out = np.zeros_like(probs)
    out[order[:keep]] = probs[order[:keep]]
    return out / out.sum()


def sample_from_probs(probs: np.ndarray, top_p: float, rng: np.random.Generator) -> int:
    p = top_p_filter(probs.astype(np.float64), top_p)
    p = p / p.sum()
    return int(rng.choice(p.size, p=p))
