"""MLC-LLM's symmetric INT4 group quantization, in numpy, bit-exact with MLC.

For each group of ``GROUP_SIZE`` consecutive elements along the input (K) axis (the constants are
those of :mod:`mcpm_mobile.model.quantization`)::

    scale = max|w| / 7                       (in the model dtype)
    q     = clamp(round(w / scale + 7), 0, 14)
    w'    = (q - 7) * scale

Eight 4-bit codes are packed into one uint32 along K, lowest index in the lowest nibble.
A partial tail group is zero padded. A group that is all zeros gets scale 0 and code 7.
"""
from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from mcpm_mobile.model.quantization import BITS, ELEMS_PER_WORD, GROUP_SIZE, MAX_INT, num_groups

_BLOCK_ELEMS = 1 << 18


def quantize_rows(w: np.ndarray, model_dtype: str = "float16",
                  pool: Executor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w`` [N, K] row-wise. Returns (q_weight uint32 [N, G*4], q_scale [N, G]) in NK layout.

    With a ``pool``, row blocks are quantized on its threads (numpy releases the GIL).
    """
    dtype = np.dtype(model_dtype)
    w = np.asarray(w)
    n, k = w.shape
    groups = num_groups(k)
    q_weight = np.empty((n, groups * GROUP_SIZE // ELEMS_PER_WORD), np.uint32)
    q_scale = np.empty((n, groups), dtype)
    step = max(1, _BLOCK_ELEMS // max(k, 1))
    blocks = [(r, min(n, r + step)) for r in range(0, n, step)]

    def work(block):
        r0, r1 = block
        q_weight[r0:r1], q_scale[r0:r1] = _quantize_block(w[r0:r1], dtype, groups)

    if pool is not None and len(blocks) > 1:
        list(pool.map(work, blocks))
    else:
        for block in blocks:
            work(block)
    return q_weight, q_scale


def _quantize_block(w: np.ndarray, dtype: np.dtype, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The arithmetic in float32 with a rounding to ``dtype`` after each step. For float16 this equals
    float16 arithmetic exactly: float32 holds 2*11+2 bits, so the double rounding is innocuous."""
    n, k = w.shape
    x = w.astype(dtype).astype(np.float32)
    if groups * GROUP_SIZE != k:
        x = np.concatenate([x, np.zeros((n, groups * GROUP_SIZE - k), np.float32)], axis=1)
    g = x.reshape(n, groups, GROUP_SIZE)
    scale = (np.abs(g).max(axis=2) / np.float32(MAX_INT)).astype(dtype)
    s32 = scale.astype(np.float32)
    zero = s32 == 0
    s32[zero] = 1
    g /= s32[:, :, None]
    g = g.astype(dtype).astype(np.float32)
    g += np.float32(MAX_INT)
    g = g.astype(dtype).astype(np.float32)
    np.rint(g, out=g)
    np.clip(g, 0, 2 * MAX_INT, out=g)
    g[zero] = MAX_INT
    return pack(g.reshape(n, groups * GROUP_SIZE).astype(np.uint32)), scale


def pack(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes [N, K] (K a multiple of 8) into uint32 [N, K/8], low nibble first."""
    n, k = codes.shape
    c = codes.astype(np.uint32).reshape(n, k // ELEMS_PER_WORD, ELEMS_PER_WORD)
    shifts = (np.arange(ELEMS_PER_WORD, dtype=np.uint32) * BITS)[None, None, :]
    return np.bitwise_or.reduce(c << shifts, axis=2).astype(np.uint32)


def unpack(words: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack`: uint32 [N, W] -> codes uint8 [N, W*8]."""
    shifts = (np.arange(ELEMS_PER_WORD, dtype=np.uint32) * BITS)[None, None, :]
    codes = (words[:, :, None] >> shifts) & np.uint32(0xF)
    return codes.reshape(words.shape[0], -1).astype(np.uint8)


def dequantize_rows(q_weight: np.ndarray, q_scale: np.ndarray, k: int | None = None) -> np.ndarray:
    """NK-layout q_weight/q_scale -> weights [N, K] in the scale dtype (tail padding cut to ``k``)."""
    codes = unpack(q_weight).astype(q_scale.dtype)
    n = codes.shape[0]
    groups = q_scale.shape[1]
    w = (codes.reshape(n, groups, GROUP_SIZE) - q_scale.dtype.type(MAX_INT)) * q_scale[:, :, None]
    w = w.reshape(n, groups * GROUP_SIZE)
    return w if k is None else w[:, :k]
