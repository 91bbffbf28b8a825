"""llama.cpp's K-quant block formats (Q4_K, Q5_K, Q6_K) in numpy: quantize, and the byte layout.

Written from the semantics of ggml's reference quantizers (``ggml/src/ggml-quants.c``:
``quantize_row_q{4,5,6}_K_ref``, ``make_qkx2_quants``, ``make_qx_quants``), which llama-quantize uses when
no importance matrix is given. Every step is float32 in ggml's operation order (sums left to right), vectorized
across blocks (values down axis 0, blocks across axis 1), so a file we write holds the same bytes as
llama.cpp's; the tests check this against ggml itself. (A rare near-tie can still go the other way where
llama.cpp's compiled arithmetic fuses a multiply-add.)

A super-block holds 256 weights (``QK_K``):

- Q4_K / Q5_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min (packed in 12 bytes), times the
  super-block's float16 ``d`` and ``dmin``; x ~ d*sc*q - dmin*m, q in 0..15 (0..31 for Q5_K, the 5th bit
  in ``qh``). Bytes: d, dmin, scales[12], (qh[32],) qs[128].
- Q6_K: 16 sub-blocks of 16 with a signed 8-bit scale times float16 ``d``; x ~ d*sc*(q - 32), q in 0..63.
  Bytes: ql[128], qh[64], scales[16], d.
"""
from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
GROUP_MAX_EPS = np.float32(1e-15)
F32 = np.float32


def _rint(x: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: round half to even, as float32 arithmetic does."""
    return np.rint(x).astype(np.int32)


def _sum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis in order, in float32, as ggml's loops do (numpy's pairwise ``sum`` order moves
    rounding decisions in a few percent of the blocks). Values run down axis 0, blocks across axis 1."""
    acc = a[0].astype(F32)
    for row in a[1:]:
        acc += row
    return acc


def fit_scale_min(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Per column of ``x`` ([values, blocks]): levels L in 0..nmax, scale s and min m with x ~ s*L - m.

    Weighted least squares over a sweep of candidate scales (ggml's ``make_qkx2_quants``, squared error):
    start from the min/max grid, then for each trial scale round to levels and refit scale and offset.
    """
    x, w = x.astype(F32, copy=False), w.astype(F32, copy=False)
    lo = np.minimum(x.min(0), F32(0))
    hi = x.max(0)
    span = hi - lo
    flat = span == 0
    span = np.where(flat, F32(1), span)
    sum_w = _sum(w)
    sum_x = _sum(w * x)
    iscale = F32(nmax) / span
    levels = np.clip(np.rint(iscale * (x - lo)), 0, nmax)  # small integers, exact in float32
    scale = F32(1) / iscale
    offset = lo  # x ~ scale*L + offset, offset <= 0
    err = _sum(w * np.square(scale * levels + offset - x))
    for step in range(nstep + 1):
        # ggml moves the grid's origin to the best offset found so far, so later trials start from it
        width = hi - offset
        width = np.where(width > 0, width, F32(1))
        trial = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / width
        cand = np.clip(np.rint(trial * (x - offset)), 0, nmax)
        wl = w * cand
        sum_l = _sum(wl)
        sum_l2 = _sum(wl * cand)
        sum_xl = _sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        det = np.where(ok, det, F32(1))
        s = (sum_w * sum_xl - sum_x * sum_l) / det
        m = (sum_l2 * sum_x - sum_l * sum_xl) / det
        pos = m > 0
        s = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, F32(1)), s)
        m = np.where(pos, F32(0), m)
        e = _sum(w * np.square(s * cand + m - x))
        better = ok & (e < err)
        levels = np.where(better, cand, levels)
        err = np.where(better, e, err)
        scale = np.where(better, s, scale)
        offset = np.where(better, m, offset)
    levels = np.where(flat, F32(0), levels).astype(np.int32)
    scale = np.where(flat, F32(0), scale)
    return levels, scale.astype(F32), np.where(flat, -lo, -offset).astype(F32)


def fit_symmetric(x: np.ndarray, nmax: int):
    """Per column of ``x`` ([values, blocks]): levels L in 0..2*nmax-1 and scale s, x ~ s*(L - nmax), weighted
    by x**2.

    ggml's ``make_qx_quants`` with ``rmse_type`` 1: the grid through the largest-magnitude value, then 18
    nearby grids, keeping the one with the best weighted least-squares fit.
    """
    x = x.astype(F32, copy=False)
    idx = np.abs(x).argmax(0)  # first occurrence, as ggml's strict ">" scan
    peak = np.take_along_axis(x, idx[None], 0)[0]
    zero = np.abs(peak) < GROUP_MAX_EPS
    peak = np.where(zero, F32(1), peak)
    w = x * x
    wx = w * x

    def trial(iscale):
        lv = np.clip(np.rint(iscale * x), -nmax, nmax - 1)
        return lv, _sum(wx * lv), _sum(w * lv * lv)

    levels, sumlx, suml2 = trial(F32(-nmax) / peak)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    best = scale * sumlx
    for k in [k for k in range(-9, 10) if k]:
        lv, slx, sl2 = trial(-(F32(nmax) + F32(0.1) * F32(k)) / peak)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        levels = np.where(better, lv, levels)
        scale = np.where(better, slx / np.where(sl2 > 0, sl2, F32(1)), scale)
        best = np.where(better, scale * slx, best)
    levels = np.where(zero, F32(-nmax), levels).astype(np.int32) + nmax
    return levels, np.where(zero, F32(0), scale).astype(F32)


def _pack_scales_mins(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per super-block -> 12 bytes (ggml's ``get_scale_min_k4`` layout)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _quantize_asym(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared Q4_K/Q5_K math: [n, 256] -> (levels [n, 256], d, dmin, packed scales [n, 12])."""
    n = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(n * 8, 32).T)  # [32, sub-blocks]
    rms = np.sqrt(_sum(sub * sub) / F32(32))
    levels, scale, mins = fit_scale_min(sub, rms + np.abs(sub), nmax, rmin, rdelta, nstep)
    levels = levels.T
    scale, mins = scale.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scale.max(-1), F32(0))
    max_min = np.maximum(mins.max(-1), F32(0))
    inv_s = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, F32(1)), F32(0))
    inv_m = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, F32(1)), F32(0))
    # ggml stores nearest_int into a uint8 before MIN(63, .): mirror the wrap-around
    ls = np.minimum(_rint(inv_s[:, None] * scale) & 0xFF, 63)
    lm = np.minimum(_rint(inv_m[:, None] * mins) & 0xFF, 63)
    d = (max_scale / F32(63)).astype(np.float16)
    dmin = (max_min / F32(63)).astype(np.float16)
    eff_d = d.astype(F32)[:, None] * ls.astype(F32)  # [n, 8]
    eff_m = dmin.astype(F32)[:, None] * lm.astype(F32)
    xs = x.reshape(n, 8, 32)
    safe = np.where(eff_d == 0, F32(1), eff_d)
    requant = np.clip(_rint((xs + eff_m[..., None]) / safe[..., None]), 0, nmax)
    levels = np.where((eff_d == 0)[..., None], levels.reshape(n, 8, 32), requant).reshape(n, QK_K)
    return levels.astype(np.uint8), d, dmin, _pack_scales_mins(ls, lm)


def _nibbles(levels: np.ndarray) -> np.ndarray:
    """[n, 256] 4-bit values -> [n, 128] bytes: per 64, the first 32 in low nibbles, the next 32 in high."""
    q = levels.reshape(-1, 4, 2, 32) & 0xF
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float rows (length a multiple of 256) -> Q4_K bytes [n_blocks, 144]."""
    x = np.ascontiguousarray(x, F32).reshape(-1, QK_K)
    levels, d, dmin, scales = _quantize_asym(x, 15, -1.0, 0.1, 20)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales,
                           _nibbles(levels)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float rows (length a multiple of 256) -> Q5_K bytes [n_blocks, 176]."""
    x = np.ascontiguousarray(x, F32).reshape(-1, QK_K)
    levels, d, dmin, scales = _quantize_asym(x, 31, -0.5, 0.1, 15)
    high = (levels.reshape(-1, 8, 32) >> 4).astype(np.uint8)  # bit k of qh[j]: 5th bit of sub-block k, j
    qh = np.zeros((x.shape[0], 32), np.uint8)
    for k in range(8):
        qh |= high[:, k] << k
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qh,
                           _nibbles(levels & 0xF)], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float rows (length a multiple of 256) -> Q6_K bytes [n_blocks, 210]."""
    x = np.ascontiguousarray(x, F32).reshape(-1, QK_K)
    n = x.shape[0]
    levels, scale = fit_symmetric(np.ascontiguousarray(x.reshape(n * 16, 16).T), 32)
    levels, scale = levels.T.reshape(n, 16, 16), scale.reshape(n, 16)
    pick = np.abs(scale).argmax(-1)
    max_scale = np.take_along_axis(scale, pick[:, None], -1)[:, 0]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = F32(-128) / np.where(zero, F32(1), max_scale)
    d = np.where(zero, F32(0), F32(1) / iscale).astype(np.float16)
    sc = np.minimum(_rint(iscale[:, None] * scale), 127).astype(np.int8)
    eff = d.astype(F32)[:, None] * sc.astype(F32)
    requant = np.clip(_rint(x.reshape(n, 16, 16) / np.where(eff == 0, F32(1), eff)[..., None]), -32, 31) + 32
    levels = np.where((eff == 0)[..., None], levels, requant).reshape(n, 2, 4, 32).astype(np.uint8)
    # per half of 128: ql[0:32] = q0 | q2<<4, ql[32:64] = q1 | q3<<4, qh = q0>>4 | q1>>4<<2 | q2>>4<<4 | q3>>4<<6
    lo, hi = levels & 0xF, levels >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8),
                          d.view(np.uint8).reshape(-1, 2)], axis=1)
    return np.where(zero[:, None], np.uint8(0), out)


QUANTIZERS = {"q4_k": quantize_q4_k, "q5_k": quantize_q5_k, "q6_k": quantize_q6_k}


def quantize_rows(x: np.ndarray, kind: str, rows_per_chunk: int = 0) -> np.ndarray:
    """A 2-D float matrix -> its K-quant bytes, [rows, row_bytes], a chunk of rows at a time."""
    x = np.asarray(x)
    rows, cols = x.shape
    if cols % QK_K:
        raise ValueError(f"{kind}: row length {cols} is not a multiple of {QK_K}")
    per_row = cols // QK_K * BLOCK_BYTES[kind]
    out = np.empty((rows, per_row), np.uint8)
    step = rows_per_chunk or max(1, (1 << 20) // cols)  # about 1M weights at a time bounds the temporaries
    for r in range(0, rows, step):
        out[r:r + step] = QUANTIZERS[kind](x[r:r + step]).reshape(-1, per_row)
    return out
