"""The one quantization descriptor, shared by quantize, the compiler, the exporters and the device model.

MLC's presets (``q4f16_1`` ...) are what ``quantize`` writes; GGUF's types (``q4_0`` ...) are what
``export-gguf`` writes and what measured llama.cpp rows use. Both are symmetric group quantizations::

    scale = max|w| / MAX_INT  per group of ``group_size`` weights along the input (K) axis
    code  = clamp(round(w / scale + MAX_INT), 0, 2 * MAX_INT)

MLC packs eight 4-bit codes per uint32 word, lowest index in the lowest nibble.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mcpm_mobile.errors import fail

GROUP_SIZE = 32
BITS = 4
ELEMS_PER_WORD = 32 // BITS  # 8 codes per uint32
MAX_INT = 2 ** (BITS - 1) - 1  # 7


def num_groups(k: int, group_size: int = GROUP_SIZE) -> int:
    """Groups along a row of ``k`` weights (a partial tail group is zero padded)."""
    return -(-k // group_size)


@dataclass(frozen=True)
class Quantization:
    """What a weight costs and how it is stored.

    ``bits`` 0 means unquantized (weights kept in ``model_dtype``). ``layout``: "NK" stores
    q_weight [N, K/8] and q_scale [N, K/32]; "KN" their transposes. ``scale_bits`` counts what each
    group stores besides its codes (a float16 scale: 16; a scale and a minimum: 32).
    """

    name: str
    bits: int
    model_dtype: str  # scales, activations, norms, unquantized weights and the KV cache
    layout: str = "NK"
    group_size: int = GROUP_SIZE
    storage_dtype: str = "uint32"
    scale_bits: int | None = None  # default: one scale in model_dtype

    @property
    def quantized(self) -> bool:
        return self.bits > 0

    @property
    def dtype_bytes(self) -> int:
        return np.dtype(self.model_dtype).itemsize

    @property
    def bits_per_weight(self) -> float:
        if not self.quantized:
            return self.dtype_bytes * 8
        scale = self.dtype_bytes * 8 if self.scale_bits is None else self.scale_bits
        return self.bits + scale / self.group_size

    def groups(self, k: int) -> int:
        return num_groups(k, self.group_size)

    def matrix_bytes(self, n: int, k: int) -> int:
        """Bytes of an [n, k] weight matrix (k is the reduction axis, padded to whole groups)."""
        if not self.quantized:
            return n * k * self.dtype_bytes
        return math.ceil(n * self.groups(k) * self.group_size * self.bits_per_weight / 8)


QUANTIZATIONS = {q.name: q for q in (
    Quantization("q4f16_1", BITS, "float16", "NK"),
    Quantization("q4f16_0", BITS, "float16", "KN"),
    Quantization("q4f32_1", BITS, "float32", "NK"),
    Quantization("q0f16", 0, "float16"),
    Quantization("q0f32", 0, "float32"),
)}

# llama.cpp block types (ggml-common.h): 32 weights a block with a float16 scale (q4_1 adds a minimum).
GGUF_TYPES = {q.name: q for q in (
    Quantization("q4_0", 4, "float16", storage_dtype="uint8"),
    Quantization("q4_1", 4, "float16", storage_dtype="uint8", scale_bits=32),
    Quantization("q8_0", 8, "float16", storage_dtype="uint8"),
    Quantization("f16", 0, "float16"),
    Quantization("f32", 0, "float32"),
)}

DEFAULT = "q4f16_1"


def get_quantization(name: str) -> Quantization:
    """An MLC preset by name; a one-line error naming the parameter otherwise."""
    if name not in QUANTIZATIONS:
        raise fail("quantization", f"unknown '{name}' (choose from {', '.join(QUANTIZATIONS)})")
    return QUANTIZATIONS[name]
