"""An independent float64 numpy MiniCPM, written from the Hugging Face ``modeling_minicpm.py`` semantics.

It shares no code with the TVM model (``mcpm_mobile.model``): it reads the *HF* tensor names
(``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``, unpermuted) straight from the
safetensors files with its own parser, applies rotate-half RoPE to q and k itself, and recomputes
the whole sequence for every step (no cache).

LongRoPE (``rope_scaling`` with ``rope_type``/``type`` "longrope") follows OpenBMB's ``MiniCPMLongRoPE``:
the cos/sin table is built for ``max_position_embeddings`` positions (rebuilt longer only for a longer
input) with the long factors when the table is longer than ``original_max_position_embeddings``, else
the short ones, and cos/sin are multiplied by ``sqrt(1 + ln(max_pos / orig) / ln(orig))``.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16", "I64": np.int64,
              "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (little-endian header length, JSON header, raw data) -> float64."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = raw[base + start:base + end]
        dt = _ST_DTYPES[info["dtype"]]
        if dt == "bf16":
            a = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, dt)
        out[name] = a.reshape(info["shape"]).astype(np.float64)
    return out


def read_hf_checkpoint(model_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(read_safetensors(f))
    return config, weights


class ReferenceMiniCPM:
    """``logits(ids)`` -> float64 [len(ids), vocab] for every position."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray]):
        self.c = config
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.L = config["num_hidden_layers"]
        self.H = config["hidden_size"]
        self.nh = config["num_attention_heads"]
        self.nkv = config.get("num_key_value_heads") or self.nh
        self.hd = self.H // self.nh
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.theta = config.get("rope_theta", 10000.0)
        self.max_pos = config.get("max_position_embeddings", 2048)
        self.tied = "lm_head.weight" not in self.w
        self._tables = {}

    def rope_table(self, n: int):
        """cos, sin [n, hd] as ``_set_cos_sin_cache(seq_len=n)`` builds them."""
        inv = 1.0 / (self.theta ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd))
        t = np.arange(n, dtype=np.float64)
        rs = self.c.get("rope_scaling")
        if rs:
            assert rs.get("rope_type", rs.get("type")) == "longrope"
            orig = rs["original_max_position_embeddings"]
            ext = np.array(rs["long_factor"] if n > orig else rs["short_factor"], np.float64)
            amp = math.sqrt(1 + math.log(self.max_pos / orig) / math.log(orig))
            freqs = np.outer(t, 1.0 / ext) * inv
        else:
            amp, freqs = 1.0, np.outer(t, inv)
        emb = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(emb) * amp, np.sin(emb) * amp

    def _rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x, pos):
        # x: [heads, T, hd]; HF rotate_half with cos/sin of concatenated frequencies
        n = max(self.max_pos, len(pos))
        if n not in self._tables:
            self._tables[n] = self.rope_table(n)
        cos, sin = self._tables[n]
        cos, sin = cos[pos], sin[pos]
        half = self.hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def logits(self, ids) -> np.ndarray:
        w, c = self.w, self.c
        ids = np.asarray(ids)
        T = len(ids)
        pos = np.arange(T)
        x = w["model.embed_tokens.weight"][ids] * c.get("scale_emb", 1.0)
        res = c.get("scale_depth", 1.0) / np.sqrt(self.L)
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        group = self.nh // self.nkv
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = self._rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, self.nh, self.hd).transpose(1, 0, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, self.nkv, self.hd).transpose(1, 0, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, self.nkv, self.hd).transpose(1, 0, 2)
            q, k = self._rope(q, pos), self._rope(k, pos)
            k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(self.hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = (s @ v).transpose(1, 0, 2).reshape(T, self.H)
            x = x + (o @ w[p + "self_attn.o_proj.weight"].T) * res
            h = self._rms(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            u = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (((g / (1.0 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T) * res
        x = self._rms(x, w["model.norm.weight"])
        x = x / (self.H / c.get("dim_model_base", self.H))
        head = w["model.embed_tokens.weight"] if self.tied else w["lm_head.weight"]
        return x @ head.T

    def greedy(self, prompt_ids, n: int) -> list[int]:
        ids = list(prompt_ids)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(self.logits(ids)[-1]))
            out.append(nxt)
            ids.append(nxt)
        return out
