"""The float model for ``eval``: MiniCPM in float32 numpy on the checkpoint's own weights.

Every window goes through one layer before the next, so each layer's weights are read and widened to
float32 once per evaluation and memory stays at one layer plus the activations, also for a 2B checkpoint.
Hugging Face semantics (``modeling_minicpm.py``): rotate-half RoPE on the unpermuted q/k rows (LongRoPE's
factors and amplitude from ``model/rope.py``, as MiniCPM4/4.1 declare them), muP scalings (``scale_emb``,
``scale_depth / sqrt(layers)``, logits divided by ``hidden_size / dim_model_base``).
"""
from __future__ import annotations

import numpy as np

from mcpm_mobile.model import rope
from mcpm_mobile.model.checkpoint import Checkpoint

F32 = np.float32
HEAD_ROWS = 8192  # output-matrix rows widened to float32 at a time


class FloatModel:
    label = "float"

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.c = ckpt, ckpt.config
        self.kind = f"{ckpt.tensors['model.embed_tokens.weight'].dtype.lower()} checkpoint, float32 numpy"

    def _embed(self, windows: np.ndarray) -> np.ndarray:
        """Rows of the embedding for these ids, widening only the rows used."""
        ids, where = np.unique(windows, return_inverse=True)
        rows = np.stack([self.ckpt.get("model.embed_tokens.weight", slice(t, t + 1))[0] for t in ids])
        return rows[where.reshape(windows.shape)]

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        var = np.mean(np.square(x), axis=-1, keepdims=True)
        return (x / np.sqrt(var + F32(self.c.rms_norm_eps))) * w

    def logits(self, windows: np.ndarray, first: int, advance=lambda n=1: None) -> np.ndarray:
        """``windows`` int [n, T] -> float32 logits [n, T - 1 - first, vocab] at positions first .. T-2."""
        c, get = self.c, self.ckpt.get
        n, T = windows.shape
        nh, nkv, hd, H = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
        res = F32(c.residual_scale)
        cos, sin = (np.concatenate([f, f], -1).astype(F32) for f in rope.cos_sin(T, hd, c.rope_theta, c.longrope))
        mask = np.triu(np.full((T, T), -np.inf, F32), k=1)
        x = self._embed(windows) * F32(c.scale_emb)  # [n, T, H]
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            h = self._rms(x, get(p + "input_layernorm.weight")).reshape(n * T, H)
            q = (h @ get(p + "self_attn.q_proj.weight").T).reshape(n, T, nh, hd).transpose(0, 2, 1, 3)
            k = (h @ get(p + "self_attn.k_proj.weight").T).reshape(n, T, nkv, hd).transpose(0, 2, 1, 3)
            v = (h @ get(p + "self_attn.v_proj.weight").T).reshape(n, T, nkv, hd).transpose(0, 2, 1, 3)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
            s = q @ k.transpose(0, 1, 3, 2) * F32(1 / np.sqrt(hd)) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = (s @ v).transpose(0, 2, 1, 3).reshape(n * T, H)
            x = x + (o @ get(p + "self_attn.o_proj.weight").T).reshape(n, T, H) * res
            h = self._rms(x, get(p + "post_attention_layernorm.weight")).reshape(n * T, H)
            g = h @ get(p + "mlp.gate_proj.weight").T
            u = h @ get(p + "mlp.up_proj.weight").T
            x = x + ((g / (F32(1) + np.exp(-g)) * u) @ get(p + "mlp.down_proj.weight").T).reshape(n, T, H) * res
            advance()
        x = self._rms(x[:, first:T - 1], get("model.norm.weight")) / F32(c.logit_scale)
        head = "model.embed_tokens.weight" if "lm_head.weight" not in self.ckpt.tensors else "lm_head.weight"
        out = np.empty((n, T - 1 - first, c.vocab_size), F32)
        for r in range(0, c.vocab_size, HEAD_ROWS):
            out[..., r:r + HEAD_ROWS] = x @ get(head, slice(r, r + HEAD_ROWS)).T
        advance()
        return out
