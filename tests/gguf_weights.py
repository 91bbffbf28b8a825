"""A GGUF file -> Hugging Face-named float64 weights (dequantized, Q/K rows back in HF order), for the numpy
reference. Written from the GGUF conventions directly, not with the exporter's own helpers."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m:
        return f"model.layers.{m[1]}.{_LAYER[m[2]]}.weight"
    return _GLOBAL[gguf_name.removesuffix(".weight")] + ".weight"


def hf_rows(n_rows: int, n_head: int) -> np.ndarray:
    """GGUF row index for each HF row: llama.cpp stores each head's (x_i, x_{i+d/2}) rotary pairs adjacently."""
    d = n_rows // n_head
    order = np.empty(n_rows, np.int64)
    for h in range(n_head):
        for j in range(2):
            for i in range(d // 2):
                order[h * d + j * d // 2 + i] = h * d + 2 * i + j
    return order


def tensor_array(t) -> np.ndarray:
    """A reader tensor as float32 in HF (out, in) shape."""
    shape = tuple(int(n) for n in reversed(t.shape))
    return np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)


def dequantized_hf_weights(path: Path, n_head: int, n_kv_head: int) -> dict[str, np.ndarray]:
    weights = {}
    for t in GGUFReader(path).tensors:
        if t.name.startswith("rope_factors_"):  # LongRoPE factors, not a checkpoint weight
            continue
        w = tensor_array(t).astype(np.float64)
        if ".attn_q." in t.name:
            w = w[hf_rows(w.shape[0], n_head)]
        elif ".attn_k." in t.name:
            w = w[hf_rows(w.shape[0], n_kv_head)]
        weights[hf_name(t.name)] = w
    return weights
