"""Which GGML type each MiniCPM tensor gets, per file type, as llama-quantize decides it.

Mirrors the rules of llama.cpp's ``src/llama-quant.cpp`` (``llama_tensor_get_type_impl`` and
``tensor_type_fallback``; read at the commit llama-cpp-python 0.3.36 vendors) for a dense model without an
importance matrix, so that our ``q4_k_m`` holds the same types as llama.cpp's Q4_K_M of the same weights:

- the output matrix (or the token embedding when it is also the output) gets Q6_K, or Q8_0 when its rows
  are not a multiple of the file type's block;
- Q4_K_M and Q5_K_M give Q6_K to ``attn_v`` and ``ffn_down`` of the layers ``use_more_bits`` picks (the first
  and last eighth, and every third layer between);
- a K-quant that does not fit the row length (multiple of 256) falls back to a 32-block type
  (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), and to F16 when the row is not a multiple of 32 either.
  MiniCPM-2B's ``ffn_down`` rows (5760) take this path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType


@dataclass(frozen=True)
class FileType:
    default: Q  # every 2-D weight the rules do not change
    file_type: FT
    more_bits: bool = False  # the _M mixtures: Q6_K for some attn_v / ffn_down layers


FILE_TYPES = {
    "q4_0": FileType(Q.Q4_0, FT.MOSTLY_Q4_0),
    "q8_0": FileType(Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_k_m": FileType(Q.Q4_K, FT.MOSTLY_Q4_K_M, more_bits=True),
    "q5_k_m": FileType(Q.Q5_K, FT.MOSTLY_Q5_K_M, more_bits=True),
    "q6_k": FileType(Q.Q6_K, FT.MOSTLY_Q6_K),
}
FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def block_size(qtype: Q) -> int:
    return gguf.GGML_QUANT_SIZES[qtype][0]


def use_more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, cols: int, file_type: str, n_layers: int, tied: bool) -> Q:
    """The type of 2-D weight ``name`` (GGUF name, rows of ``cols`` values) in a ``file_type`` file."""
    ft = FILE_TYPES[file_type]
    qtype = ft.default
    m = _LAYER.fullmatch(name)
    role = m[2] if m else name.removesuffix(".weight")
    if role == "output" or (tied and role == "token_embd"):
        if cols % block_size(ft.default):
            qtype = Q.Q8_0
        elif ft.default != Q.Q8_0:
            qtype = Q.Q6_K
    elif ft.more_bits and role in ("attn_v", "ffn_down") and use_more_bits(int(m[1]), n_layers):
        qtype = Q.Q6_K
    if cols % block_size(qtype):
        if qtype not in FALLBACK:
            raise ValueError(f"{name}: rows of {cols} values do not fit {qtype.name} blocks")
        qtype = FALLBACK[qtype]
        if cols % block_size(qtype):
            qtype = Q.F16
    return qtype
