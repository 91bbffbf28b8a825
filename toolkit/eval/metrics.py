"""What quantization costs, per predicted token: KL divergence from the float model, top-1 agreement, NLL.

All in float64 from the engines' float32 logits. ``KL(P || Q) = sum_v P(v) (log P(v) - log Q(v))`` with P the
float model's next-token distribution and Q the quantized one, as llama.cpp's ``llama-perplexity
--kl-divergence`` reports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_divergence(base_logp: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """Per row: KL(base || other) from log-probabilities (rows of a vocabulary)."""
    p = np.exp(base_logp)
    return np.maximum((p * (base_logp - logp)).sum(-1), 0.0)


@dataclass
class Scores:
    """Per-token results of one model over the scored positions of every window."""

    nll: list[np.ndarray] = field(default_factory=list)  # -log Q(next token)
    kl: list[np.ndarray] = field(default_factory=list)  # KL(float || this); empty for the float model itself
    agree: list[np.ndarray] = field(default_factory=list)  # argmax equal to the float model's
    seconds: float = 0.0  # time in the engine computing logits
    tokens: int = 0  # tokens the engine processed (whole windows)

    def add(self, logp: np.ndarray, targets: np.ndarray, base_logp: np.ndarray | None) -> None:
        self.nll.append(-logp[np.arange(len(targets)), targets])
        if base_logp is not None:
            self.kl.append(kl_divergence(base_logp, logp))
            self.agree.append(logp.argmax(-1) == base_logp.argmax(-1))

    def summary(self) -> dict:
        nll = np.concatenate(self.nll)
        s = {"tokens_scored": int(nll.size), "perplexity": float(np.exp(nll.mean())), "seconds": round(self.seconds, 3),
             "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds else None}
        if self.kl:
            kl, agree = np.concatenate(self.kl), np.concatenate(self.agree)
            s.update(kl_mean=float(kl.mean()), kl_mean_stderr=float(kl.std(ddof=1) / np.sqrt(kl.size)) if kl.size > 1
                     else 0.0, kl_median=float(np.median(kl)), kl_p99=float(np.percentile(kl, 99)),
                     kl_max=float(kl.max()), top1_agreement=float(agree.mean()))
        return s
