"""MLC weights directory -> Hugging Face-named float64 weights (dequantized), for the numpy reference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mcpm_mobile.formats.tensor_cache import load_tensors
from mcpm_mobile.model.quantization import QUANTIZATIONS
from mcpm_mobile.quantize.group import dequantize_rows


def dequantized_hf_weights(weights_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF-style config, {HF name: float64 array}) from what `quantize` wrote, dequantized exactly."""
    chat = json.loads((Path(weights_dir) / "mlc-chat-config.json").read_text())
    cfg = dict(chat["model_config"])
    quant = QUANTIZATIONS[chat["quantization"]]
    t = load_tensors(weights_dir)
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = (cfg.get("num_key_value_heads") or nh) * (h // nh)

    def full(name: str, k: int, linear: bool = True) -> np.ndarray:
        if name + ".weight" in t:
            return t[name + ".weight"].astype(np.float64)
        qw, qs = t[name + ".q_weight"], t[name + ".q_scale"]
        if quant.layout == "KN" and linear:
            qw, qs = qw.T, qs.T
        return dequantize_rows(np.ascontiguousarray(qw), np.ascontiguousarray(qs), k).astype(np.float64)

    w = {"model.embed_tokens.weight": full("model.embed_tokens", h, linear=False),
         "model.norm.weight": t["model.norm.weight"].astype(np.float64)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = full(p + "self_attn.wqkv_pack", h)
        w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"], w[p + "self_attn.v_proj.weight"] = (
            qkv[:h], qkv[h:h + kv], qkv[h + kv:])
        w[p + "self_attn.o_proj.weight"] = full(p + "self_attn.o_proj", h)
        gu = full(p + "mlp.gate_up_proj", h)
        inter = gu.shape[0] // 2
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = gu[:inter], gu[inter:]
        w[p + "mlp.down_proj.weight"] = full(p + "mlp.down_proj", inter)
        for n in ("input_layernorm", "post_attention_layernorm"):
            w[p + n + ".weight"] = t[p + n + ".weight"].astype(np.float64)
    if "lm_head.q_weight" in t or "lm_head.weight" in t:
        w["lm_head.weight"] = full("lm_head", h)
    return cfg, w
