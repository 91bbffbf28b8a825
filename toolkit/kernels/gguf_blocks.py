"""GGUF's Q4_0, Q8_0, Q6_K, Q4_K and Q5_K blocks as compiled host kernels, byte for byte what the numpy
quantizers write.

Q4_0 and Q8_0 follow ``gguf.quants`` (gguf-py's ``Q4_0.quantize_blocks``/``Q8_0.quantize_blocks``), the K-quants
our ``gguf_kquants`` (ggml's ``quantize_row_q{4,5,6}_K_ref``): float32 throughout, products rounded before
they are added (``tir.no_fma``), sums in the same order (vectorized across a super-block's sub-blocks, never
along a sum). Each kernel reads the rows as stored (bfloat16 as its uint16 bits, float16, float32, straight from
the memory map), one row per task on TVM's thread pool, and writes the GGUF bytes of the row. A row it cannot
match flags itself (NaN/Inf; a Q4_0/Q8_0 block whose 1/d overflows; K-quant values of 2**24 or more, whose
cubes or weighted squares may overflow float32): :func:`quantize` then returns None and the caller runs the
numpy path, which reports NaN/Inf as usual.
"""
from __future__ import annotations

import functools
from pathlib import Path

import gguf
import numpy as np

from mcpm_mobile.kernels import tir
from mcpm_mobile.support.cache import cached_kernel

Q = gguf.GGMLQuantizationType
BLOCK = {Q.Q4_0: 32, Q.Q8_0: 32, Q.Q6_K: 256, Q.Q4_K: 256, Q.Q5_K: 256}
BLOCK_BYTES = {Q.Q4_0: 18, Q.Q8_0: 34, Q.Q6_K: 210, Q.Q4_K: 144, Q.Q5_K: 176}
Q6_K_LIMIT = float(1 << 24)  # |x| from here on: x**3 * 32**2 may overflow float32; numpy path
GROUP_MAX_EPS = 1e-15  # gguf_kquants.GROUP_MAX_EPS
# fit_symmetric's trial scales: -(32 + 0.1 k) in float32, k = 0 first, then -9..9 without 0
TRIALS = [float(-(np.float32(32) + np.float32(0.1) * np.float32(k))) for k in [0, *range(-9, 0), *range(1, 10)]]


def _rows(source: str, row):
    """The PrimFunc every kernel here is: ``f(w [n, k] as stored, out uint8 [n, m], bad int32 [n])``, one row per
    task on TVM's thread pool; ``row(w, o, bad, vi, k)`` (a ``T.macro``) writes row ``vi`` and its flag."""
    from tvm.script import tirx as T

    item = np.dtype(source).itemsize

    @T.prim_func(private=True, s_tir=True)
    def main(w_h: T.handle, o_h: T.handle, bad_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n, k, m = T.int64(), T.int64(), T.int64()
        w = T.match_buffer(w_h, (n, k), source, align=item)  # rows where they lie: any alignment
        o = T.match_buffer(o_h, (n, m), "uint8", align=1)
        bad = T.match_buffer(bad_h, (n,), "int32")
        for i in T.parallel(n):
            with T.sblock("row"):
                vi = T.axis.spatial(n, i)
                T.reads()
                T.writes()
                row(w, o, bad, vi, k)

    return main


def _q32(kind: Q, source: str):
    """Q4_0 / Q8_0 over rows of ``source``: ``f(w [n, 32 b], out uint8 [n, b * block bytes], bad int32 [n])``."""
    from tvm import tirx
    from tvm.script import tirx as T

    L, size = 32, BLOCK_BYTES[kind]

    def x_of(w, vi, g):
        return tir.load_f32(w[vi, T.ramp(g * L, 1, L)], source, L, T)

    def scale(x):
        if kind == Q.Q4_0:  # d = the first largest-magnitude value / -8
            return tir.first_abs_max(x, L, T, tirx) / T.float32(-8)
        return tir.fold_all(T.fabs(x), L, T.max, tirx, bind=True) / T.float32(127)

    def codes(x, inv):
        v = x * T.Broadcast(inv, L)
        if kind == Q.Q4_0:  # trunc(x * id + 8.5) clipped to 15, low nibbles from the first 16
            c = T.Cast(f"uint8x{L}", T.min(T.trunc(tir.no_fma(v, L, T) + T.Broadcast(T.float32(8.5), L)),
                                           T.Broadcast(T.float32(15), L)))
            lo, hi = tirx.Shuffle([c], list(range(16))), tirx.Shuffle([c], list(range(16, 32)))
            return lo | T.shift_left(hi, T.Broadcast(T.uint8(4), 16))
        a = T.fabs(v)  # gguf's np_roundf: round half away from zero, as floor(a) + floor(2 (a - floor(a)))
        b = T.floor(a) + T.floor(T.Broadcast(T.float32(2), L) * (a - T.floor(a)))
        q = T.Select(v < T.Broadcast(T.float32(0), L), T.Broadcast(T.float32(0), L) - b, b)
        return T.reinterpret(f"uint8x{L}", T.Cast(f"int8x{L}", q))

    @T.macro
    def row(w, o, bad, vi, k):
        st = T.sblock_alloc_buffer((2,), "float32")  # d, 1/d
        fl = T.sblock_alloc_buffer((L,), "int32")  # per lane: some block had NaN/Inf here
        fl[T.ramp(0, 1, L)] = T.Broadcast(0, L)
        for g in range(k // L):
            st[0] = scale(x_of(w, vi, g))
            st[1] = T.if_then_else(st[0] == T.float32(0), T.float32(0), T.float32(1) / st[0])
            fl[T.ramp(0, 1, L)] = fl[T.ramp(0, 1, L)] | T.Cast(
                f"int32x{L}", tir.not_finite(x_of(w, vi, g), L, T)) | T.Broadcast(
                T.Cast("int32", tir.not_finite(st[1], 1, T)), L)  # 1/d overflowed
            o[vi, T.ramp(g * size + 2, 1, size - 2)] = codes(x_of(w, vi, g), st[1])
            o[vi, g * size] = tir.f16_byte(st[0], 0, T)
            o[vi, g * size + 1] = tir.f16_byte(st[0], 1, T)
        bad[vi] = tir.any_lane(fl[T.ramp(0, 1, L)], L, tirx)

    return _rows(source, row)


def _q6_k(source: str):
    """Q6_K over rows of ``source``: ``f(w [n, 256 b], out uint8 [n, 210 b], bad int32 [n])``.

    Lanes are the 16 sub-blocks of a super-block (its values gathered transposed, ``xt[j]`` = value j of
    every sub-block), so each of ggml's sums runs in its own order down j."""
    from tvm import tirx
    from tvm.script import tirx as T

    S = 16
    NT = len(TRIALS)
    # slots of 16 lanes in the float buffer ``v``
    PEAK, ISC, SLX, SL2, SCALE, BEST, BISC, ZERO, EFF, BETTER = range(10)

    def bc(value: float):
        return T.Broadcast(T.float32(value), S)

    def trial(t):  # TRIALS[t] for a loop variable t
        e = T.float32(TRIALS[-1])
        for k in range(NT - 2, -1, -1):
            e = T.Select(t == k, T.float32(TRIALS[k]), e)
        return e

    def lane_slot(v, k):
        return v[T.ramp(k * S, 1, S)]

    def level(isc, x):  # clip(rint(iscale * x), -32, 31), as float
        return T.min(T.max(T.nearbyint(isc * x), bc(-32.0)), bc(31.0))

    @T.macro
    def row(w, o, bad, vi, k):
        xt = T.sblock_alloc_buffer((256,), "float32")  # xt[j*16 + s] = value j of sub-block s
        wt = T.sblock_alloc_buffer((256,), "float32")  # x*x
        wxt = T.sblock_alloc_buffer((256,), "float32")  # (x*x)*x
        v = T.sblock_alloc_buffer((10 * S,), "float32")
        ck = T.sblock_alloc_buffer((NT,), "float32")  # the trial constants, folded once per row
        for t in T.unroll(NT):
            ck[t] = trial(t)
        nat = T.sblock_alloc_buffer((256,), "int32")  # final levels 0..63 in value order
        sc = T.sblock_alloc_buffer((S,), "int32")
        sb = T.sblock_alloc_buffer((2,), "float32")  # super-block: max scale, d as stored
        fl = T.sblock_alloc_buffer((S,), "int32")  # per lane: NaN/Inf or too large somewhere
        fl[T.ramp(0, 1, S)] = T.Broadcast(0, S)
        for b in range(k // 256):
            for j in T.unroll(S):
                xt[T.ramp(j * S, 1, S)] = tir.load_f32(w[vi, T.ramp(b * 256 + j, S, S)], source, S, T)
                wt[T.ramp(j * S, 1, S)] = xt[T.ramp(j * S, 1, S)] * xt[T.ramp(j * S, 1, S)]
                wxt[T.ramp(j * S, 1, S)] = wt[T.ramp(j * S, 1, S)] * xt[T.ramp(j * S, 1, S)]
                fl[T.ramp(0, 1, S)] = fl[T.ramp(0, 1, S)] | T.Cast(f"int32x{S}", tir.not_finite(
                    xt[T.ramp(j * S, 1, S)], S, T) | (T.fabs(xt[T.ramp(j * S, 1, S)]) >= bc(Q6_K_LIMIT)))
            # fit_symmetric: the first largest-magnitude value of each sub-block
            v[T.ramp(PEAK * S, 1, S)] = xt[T.ramp(0, 1, S)]
            for j in T.unroll(1, S):
                v[T.ramp(PEAK * S, 1, S)] = T.Select(
                    T.fabs(xt[T.ramp(j * S, 1, S)]) > T.fabs(lane_slot(v, PEAK)), xt[T.ramp(j * S, 1, S)],
                    lane_slot(v, PEAK))
            v[T.ramp(ZERO * S, 1, S)] = T.Select(T.fabs(lane_slot(v, PEAK)) < bc(GROUP_MAX_EPS), bc(1.0),
                                                 bc(0.0))
            v[T.ramp(PEAK * S, 1, S)] = T.Select(lane_slot(v, ZERO) > bc(0.0), bc(1.0), lane_slot(v, PEAK))
            for t in range(NT):
                v[T.ramp(ISC * S, 1, S)] = T.Broadcast(ck[t], S) / lane_slot(v, PEAK)
                v[T.ramp(SLX * S, 1, S)] = tir.no_fma(
                    wxt[T.ramp(0, 1, S)] * level(lane_slot(v, ISC), xt[T.ramp(0, 1, S)]), S, T)
                v[T.ramp(SL2 * S, 1, S)] = tir.no_fma(
                    (wt[T.ramp(0, 1, S)] * level(lane_slot(v, ISC), xt[T.ramp(0, 1, S)]))
                    * level(lane_slot(v, ISC), xt[T.ramp(0, 1, S)]), S, T)
                for j in T.unroll(1, S):
                    v[T.ramp(SLX * S, 1, S)] = lane_slot(v, SLX) + tir.no_fma(
                        wxt[T.ramp(j * S, 1, S)] * level(lane_slot(v, ISC), xt[T.ramp(j * S, 1, S)]), S, T)
                    v[T.ramp(SL2 * S, 1, S)] = lane_slot(v, SL2) + tir.no_fma(
                        (wt[T.ramp(j * S, 1, S)] * level(lane_slot(v, ISC), xt[T.ramp(j * S, 1, S)]))
                        * level(lane_slot(v, ISC), xt[T.ramp(j * S, 1, S)]), S, T)
                if t == 0:
                    v[T.ramp(SCALE * S, 1, S)] = T.Select(lane_slot(v, SL2) > bc(0.0),
                                                          lane_slot(v, SLX) / lane_slot(v, SL2), bc(0.0))
                    v[T.ramp(BEST * S, 1, S)] = lane_slot(v, SCALE) * lane_slot(v, SLX)
                    v[T.ramp(BISC * S, 1, S)] = lane_slot(v, ISC)
                else:
                    v[T.ramp(BETTER * S, 1, S)] = T.Select(
                        (lane_slot(v, SL2) > bc(0.0)) & (lane_slot(v, SLX) * lane_slot(v, SLX)
                                                         > lane_slot(v, BEST) * lane_slot(v, SL2)),
                        bc(1.0), bc(0.0))
                    v[T.ramp(SCALE * S, 1, S)] = T.Select(lane_slot(v, BETTER) > bc(0.0),
                                                          lane_slot(v, SLX) / lane_slot(v, SL2),
                                                          lane_slot(v, SCALE))
                    v[T.ramp(BEST * S, 1, S)] = T.Select(lane_slot(v, BETTER) > bc(0.0),
                                                         lane_slot(v, SCALE) * lane_slot(v, SLX),
                                                         lane_slot(v, BEST))
                    v[T.ramp(BISC * S, 1, S)] = T.Select(lane_slot(v, BETTER) > bc(0.0),
                                                         lane_slot(v, ISC), lane_slot(v, BISC))
            v[T.ramp(SCALE * S, 1, S)] = T.Select(lane_slot(v, ZERO) > bc(0.0), bc(0.0), lane_slot(v, SCALE))
            # the super-block: d from the first largest-magnitude scale
            sb[0] = tir.first_abs_max(lane_slot(v, SCALE), S, T, tirx)
            if T.fabs(sb[0]) < T.float32(GROUP_MAX_EPS):
                for k in T.unroll(210 // 14):
                    o[vi, T.ramp(b * 210 + k * 14, 1, 14)] = T.Broadcast(T.uint8(0), 14)
            else:
                sb[1] = T.Cast("float32", T.Cast("float16", T.float32(1) / (T.float32(-128) / sb[0])))
                sc[T.ramp(0, 1, S)] = T.min(T.Cast(f"int32x{S}", T.nearbyint(
                    T.Broadcast(T.float32(-128) / sb[0], S) * lane_slot(v, SCALE))), T.Broadcast(127, S))
                v[T.ramp(EFF * S, 1, S)] = T.Broadcast(sb[1], S) * T.Cast(f"float32x{S}", sc[T.ramp(0, 1, S)])
                for j in T.unroll(S):
                    nat[T.ramp(j, S, S)] = T.Cast(f"int32x{S}", T.Select(
                        lane_slot(v, EFF) == bc(0.0),
                        T.Select(lane_slot(v, ZERO) > bc(0.0), bc(-32.0),
                                 level(lane_slot(v, BISC), xt[T.ramp(j * S, 1, S)])),
                        T.min(T.max(T.nearbyint(xt[T.ramp(j * S, 1, S)] / T.Select(
                            lane_slot(v, EFF) == bc(0.0), bc(1.0), lane_slot(v, EFF))), bc(-32.0)), bc(31.0))
                    ) + bc(32.0))
                for h in T.unroll(2):
                    o[vi, T.ramp(b * 210 + h * 64, 1, 32)] = T.Cast("uint8x32", (
                        nat[T.ramp(h * 128, 1, 32)] & T.Broadcast(15, 32)) | T.shift_left(
                        nat[T.ramp(h * 128 + 64, 1, 32)] & T.Broadcast(15, 32), T.Broadcast(4, 32)))
                    o[vi, T.ramp(b * 210 + h * 64 + 32, 1, 32)] = T.Cast("uint8x32", (
                        nat[T.ramp(h * 128 + 32, 1, 32)] & T.Broadcast(15, 32)) | T.shift_left(
                        nat[T.ramp(h * 128 + 96, 1, 32)] & T.Broadcast(15, 32), T.Broadcast(4, 32)))
                    o[vi, T.ramp(b * 210 + 128 + h * 32, 1, 32)] = T.Cast("uint8x32", T.shift_right(
                        nat[T.ramp(h * 128, 1, 32)], T.Broadcast(4, 32)) | T.shift_left(T.shift_right(
                            nat[T.ramp(h * 128 + 32, 1, 32)], T.Broadcast(4, 32)), T.Broadcast(2, 32))
                        | T.shift_left(T.shift_right(nat[T.ramp(h * 128 + 64, 1, 32)], T.Broadcast(4, 32)),
                                       T.Broadcast(4, 32))
                        | T.shift_left(T.shift_right(nat[T.ramp(h * 128 + 96, 1, 32)], T.Broadcast(4, 32)),
                                       T.Broadcast(6, 32)))
                o[vi, T.ramp(b * 210 + 192, 1, S)] = T.reinterpret(f"uint8x{S}", T.Cast(
                    f"int8x{S}", sc[T.ramp(0, 1, S)]))
                o[vi, b * 210 + 208] = tir.f16_byte(sb[1], 0, T)
                o[vi, b * 210 + 209] = tir.f16_byte(sb[1], 1, T)
        bad[vi] = tir.any_lane(fl[T.ramp(0, 1, S)], S, tirx)

    return _rows(source, row)


# Q4_K / Q5_K: (nmax, rmin, rdelta, nstep) of ggml's make_qkx2_quants, as gguf_kquants calls it
ASYM = {Q.Q4_K: (15, -1.0, 0.1, 20), Q.Q5_K: (31, -0.5, 0.1, 15)}
ASYM_LIMIT = float(1 << 24)  # |x| from here on: weighted squared errors may overflow float32; numpy path


def _q_k_asym(kind: Q, source: str):
    """Q4_K / Q5_K over rows of ``source``: ``f(w [n, 256 b], out uint8 [n, 144 b or 176 b], bad int32 [n])``.

    Lanes are the sub-blocks of 32 of two super-blocks (8 each; values gathered transposed), so each of ggml's
    sums runs in its own order down its sub-block; an odd last super-block is fitted twice and written once.
    The fit (``gguf_kquants.fit_scale_min``) keeps the multiplier and origin of its best grid and recomputes
    those levels where they are needed."""
    from tvm import tirx
    from tvm.script import tirx as T

    S, H, N = 16, 8, 32  # lanes: two super-blocks of 8 sub-blocks of N values
    nmax, rmin, rdelta, nstep = ASYM[kind]
    size = BLOCK_BYTES[kind]
    qs_at = 16 if kind == Q.Q4_K else 48
    f32 = np.float32
    steps = [float((f32(rmin) + f32(rdelta) * f32(st)) + f32(nmax)) for st in range(nstep + 1)]
    (LO, HI, SPAN, FLAT, SUMW, SUMX, SCALE, OFFSET, ERR, TRIAL, SL, SL2, SXL, DET, SS, MM, E, BETTER, BT, BO,
     RMS, EFFD, EFFM) = range(23)

    def bc(value, lanes=S):
        return T.Broadcast(T.float32(value), lanes)

    def at(k):
        return T.ramp(k * S, 1, S)

    def step_const(t):
        e = T.float32(steps[-1])
        for k in range(len(steps) - 2, -1, -1):
            e = T.Select(t == k, T.float32(steps[k]), e)
        return e

    def half(k, h):  # super-block h's 8 lanes of slot k
        return T.ramp(k * S + h * H, 1, H)

    def grid(mult, x, origin, lanes=S):  # clip(rint(mult * (x - origin)), 0, nmax)
        return T.min(T.max(T.nearbyint(mult * (x - origin)), bc(0.0, lanes)), bc(float(nmax), lanes))

    def nofma(p):
        return tir.no_fma(p, S, T)

    def sq_err(w, x, scale, mult, origin, offset):  # w * (scale * L + offset - x)^2, L = grid(mult, x, origin)
        e = nofma(scale * grid(mult, x, origin)) + offset - x
        return nofma(w * (e * e))

    @T.macro
    def row(w, o, bad, vi, k):
        xt = T.sblock_alloc_buffer((N * S,), "float32")  # xt[j*16 + s] = value j of sub-block s
        wt = T.sblock_alloc_buffer((N * S,), "float32")  # weights rms + |x|
        v = T.sblock_alloc_buffer((23 * S,), "float32")
        ck = T.sblock_alloc_buffer((nstep + 1,), "float32")  # the trial constants, folded once per row
        for t in T.unroll(nstep + 1):
            ck[t] = step_const(t)
        nat = T.sblock_alloc_buffer((256,), "int32")  # final levels in value order
        ls = T.sblock_alloc_buffer((H,), "int32")
        lm = T.sblock_alloc_buffer((H,), "int32")
        sb = T.sblock_alloc_buffer((4,), "float32")  # max scale, max min, d and dmin as stored
        fl = T.sblock_alloc_buffer((S,), "int32")
        fl[T.ramp(0, 1, S)] = T.Broadcast(0, S)
        for bp in range((k // 256 + 1) // 2):
            for j in T.unroll(N):
                xt[T.ramp(j * S, 1, S)] = tirx.Shuffle([
                    tir.load_f32(w[vi, T.ramp(2 * bp * 256 + j, N, H)], source, H, T),
                    tir.load_f32(w[vi, T.ramp(T.min(2 * bp + 1, k // 256 - 1) * 256 + j, N, H)], source, H, T)],
                    list(range(S)))
                fl[T.ramp(0, 1, S)] = fl[T.ramp(0, 1, S)] | T.Cast(f"int32x{S}", tir.not_finite(
                    xt[T.ramp(j * S, 1, S)], S, T) | (T.fabs(xt[T.ramp(j * S, 1, S)]) >= bc(ASYM_LIMIT)))
            # weights: rms of the sub-block + |x|
            v[at(RMS)] = nofma(xt[T.ramp(0, 1, S)] * xt[T.ramp(0, 1, S)])
            for j in T.unroll(1, N):
                v[at(RMS)] = v[at(RMS)] + nofma(xt[T.ramp(j * S, 1, S)] * xt[T.ramp(j * S, 1, S)])
            v[at(RMS)] = T.sqrt(v[at(RMS)] / bc(32.0))
            for j in T.unroll(N):
                wt[T.ramp(j * S, 1, S)] = v[at(RMS)] + T.fabs(xt[T.ramp(j * S, 1, S)])
            # fit_scale_min
            v[at(LO)] = xt[T.ramp(0, 1, S)]
            v[at(HI)] = xt[T.ramp(0, 1, S)]
            for j in T.unroll(1, N):
                v[at(LO)] = T.min(v[at(LO)], xt[T.ramp(j * S, 1, S)])
                v[at(HI)] = T.max(v[at(HI)], xt[T.ramp(j * S, 1, S)])
            v[at(LO)] = T.min(v[at(LO)], bc(0.0))
            v[at(FLAT)] = T.Select(v[at(HI)] - v[at(LO)] == bc(0.0), bc(1.0), bc(0.0))
            v[at(SPAN)] = T.Select(v[at(FLAT)] > bc(0.0), bc(1.0), v[at(HI)] - v[at(LO)])
            v[at(SUMW)] = wt[T.ramp(0, 1, S)]
            v[at(SUMX)] = nofma(wt[T.ramp(0, 1, S)] * xt[T.ramp(0, 1, S)])
            for j in T.unroll(1, N):
                v[at(SUMW)] = v[at(SUMW)] + wt[T.ramp(j * S, 1, S)]
                v[at(SUMX)] = v[at(SUMX)] + nofma(wt[T.ramp(j * S, 1, S)] * xt[T.ramp(j * S, 1, S)])
            v[at(BT)] = bc(float(nmax)) / v[at(SPAN)]
            v[at(BO)] = v[at(LO)]
            v[at(SCALE)] = bc(1.0) / v[at(BT)]
            v[at(OFFSET)] = v[at(LO)]
            v[at(ERR)] = sq_err(wt[T.ramp(0, 1, S)], xt[T.ramp(0, 1, S)], v[at(SCALE)], v[at(BT)], v[at(BO)],
                                v[at(OFFSET)])
            for j in T.unroll(1, N):
                v[at(ERR)] = v[at(ERR)] + sq_err(wt[T.ramp(j * S, 1, S)], xt[T.ramp(j * S, 1, S)], v[at(SCALE)],
                                                 v[at(BT)], v[at(BO)], v[at(OFFSET)])
            for t in range(nstep + 1):
                v[at(TRIAL)] = T.Broadcast(ck[t], S) / T.Select(
                    v[at(HI)] - v[at(OFFSET)] > bc(0.0), v[at(HI)] - v[at(OFFSET)], bc(1.0))
                for j in T.unroll(N):
                    if j == 0:
                        v[at(SL)] = nofma(wt[T.ramp(0, 1, S)] * grid(v[at(TRIAL)], xt[T.ramp(0, 1, S)],
                                                                      v[at(OFFSET)]))
                        v[at(SL2)] = nofma((wt[T.ramp(0, 1, S)] * grid(v[at(TRIAL)], xt[T.ramp(0, 1, S)],
                                                                        v[at(OFFSET)]))
                                           * grid(v[at(TRIAL)], xt[T.ramp(0, 1, S)], v[at(OFFSET)]))
                        v[at(SXL)] = nofma((wt[T.ramp(0, 1, S)] * grid(v[at(TRIAL)], xt[T.ramp(0, 1, S)],
                                                                        v[at(OFFSET)]))
                                           * xt[T.ramp(0, 1, S)])
                    else:
                        v[at(SL)] = v[at(SL)] + nofma(wt[T.ramp(j * S, 1, S)] * grid(
                            v[at(TRIAL)], xt[T.ramp(j * S, 1, S)], v[at(OFFSET)]))
                        v[at(SL2)] = v[at(SL2)] + nofma((wt[T.ramp(j * S, 1, S)] * grid(
                            v[at(TRIAL)], xt[T.ramp(j * S, 1, S)], v[at(OFFSET)])) * grid(
                            v[at(TRIAL)], xt[T.ramp(j * S, 1, S)], v[at(OFFSET)]))
                        v[at(SXL)] = v[at(SXL)] + nofma((wt[T.ramp(j * S, 1, S)] * grid(
                            v[at(TRIAL)], xt[T.ramp(j * S, 1, S)], v[at(OFFSET)])) * xt[T.ramp(j * S, 1, S)])
                v[at(DET)] = nofma(v[at(SUMW)] * v[at(SL2)]) - nofma(v[at(SL)] * v[at(SL)])
                v[at(BETTER)] = T.Select(v[at(DET)] > bc(0.0), bc(1.0), bc(0.0))  # ok
                v[at(DET)] = T.Select(v[at(DET)] > bc(0.0), v[at(DET)], bc(1.0))
                v[at(SS)] = (nofma(v[at(SUMW)] * v[at(SXL)]) - nofma(v[at(SUMX)] * v[at(SL)])) / v[at(DET)]
                v[at(MM)] = (nofma(v[at(SL2)] * v[at(SUMX)]) - nofma(v[at(SL)] * v[at(SXL)])) / v[at(DET)]
                v[at(SS)] = T.Select(v[at(MM)] > bc(0.0), v[at(SXL)] / T.Select(
                    v[at(SL2)] > bc(0.0), v[at(SL2)], bc(1.0)), v[at(SS)])
                v[at(MM)] = T.Select(v[at(MM)] > bc(0.0), bc(0.0), v[at(MM)])
                v[at(E)] = sq_err(wt[T.ramp(0, 1, S)], xt[T.ramp(0, 1, S)], v[at(SS)], v[at(TRIAL)], v[at(OFFSET)],
                                  v[at(MM)])
                for j in T.unroll(1, N):
                    v[at(E)] = v[at(E)] + sq_err(wt[T.ramp(j * S, 1, S)], xt[T.ramp(j * S, 1, S)], v[at(SS)],
                                                 v[at(TRIAL)], v[at(OFFSET)], v[at(MM)])
                v[at(BETTER)] = T.Select((v[at(BETTER)] > bc(0.0)) & (v[at(E)] < v[at(ERR)]), bc(1.0), bc(0.0))
                v[at(BT)] = T.Select(v[at(BETTER)] > bc(0.0), v[at(TRIAL)], v[at(BT)])
                v[at(BO)] = T.Select(v[at(BETTER)] > bc(0.0), v[at(OFFSET)], v[at(BO)])
                v[at(ERR)] = T.Select(v[at(BETTER)] > bc(0.0), v[at(E)], v[at(ERR)])
                v[at(SCALE)] = T.Select(v[at(BETTER)] > bc(0.0), v[at(SS)], v[at(SCALE)])
                v[at(OFFSET)] = T.Select(v[at(BETTER)] > bc(0.0), v[at(MM)], v[at(OFFSET)])
            # scale 0 and min -lo for flat sub-blocks; mins are -offset
            v[at(SCALE)] = T.Select(v[at(FLAT)] > bc(0.0), bc(0.0), v[at(SCALE)])
            v[at(OFFSET)] = T.Select(v[at(FLAT)] > bc(0.0), bc(0.0) - v[at(LO)], bc(0.0) - v[at(OFFSET)])
            for h in T.unroll(2):  # each super-block: 6-bit scales and mins, float16 d and dmin
                if h == 0 or 2 * bp + 1 < k // 256:
                    base = (2 * bp + h) * size
                    sb[0] = T.max(tir.fold_all(v[half(SCALE, h)], H, T.max, tirx), T.float32(0))
                    sb[1] = T.max(tir.fold_all(v[half(OFFSET, h)], H, T.max, tirx), T.float32(0))
                    ls[T.ramp(0, 1, H)] = T.min(T.Cast(f"int32x{H}", T.nearbyint(T.Broadcast(T.if_then_else(
                        sb[0] > T.float32(0), T.float32(63) / sb[0], T.float32(0)), H) * v[half(SCALE, h)]))
                        & T.Broadcast(255, H), T.Broadcast(63, H))
                    lm[T.ramp(0, 1, H)] = T.min(T.Cast(f"int32x{H}", T.nearbyint(T.Broadcast(T.if_then_else(
                        sb[1] > T.float32(0), T.float32(63) / sb[1], T.float32(0)), H) * v[half(OFFSET, h)]))
                        & T.Broadcast(255, H), T.Broadcast(63, H))
                    sb[2] = T.Cast("float32", T.Cast("float16", sb[0] / T.float32(63)))
                    sb[3] = T.Cast("float32", T.Cast("float16", sb[1] / T.float32(63)))
                    v[half(EFFD, h)] = T.Broadcast(sb[2], H) * T.Cast(f"float32x{H}", ls[T.ramp(0, 1, H)])
                    v[half(EFFM, h)] = tir.no_fma(
                        T.Broadcast(sb[3], H) * T.Cast(f"float32x{H}", lm[T.ramp(0, 1, H)]), H, T)
                    for j in T.unroll(N):
                        nat[T.ramp(j, N, H)] = T.Cast(f"int32x{H}", T.Select(
                            v[half(EFFD, h)] == bc(0.0, H),
                            T.Select(v[half(FLAT, h)] > bc(0.0, H), bc(0.0, H),
                                     grid(v[half(BT, h)], xt[T.ramp(j * S + h * H, 1, H)], v[half(BO, h)], H)),
                            T.min(T.max(T.nearbyint(
                                (xt[T.ramp(j * S + h * H, 1, H)] + v[half(EFFM, h)])
                                / T.Select(v[half(EFFD, h)] == bc(0.0, H), bc(1.0, H), v[half(EFFD, h)])),
                                bc(0.0, H)), bc(float(nmax), H))))
                    o[vi, base] = tir.f16_byte(sb[2], 0, T)
                    o[vi, base + 1] = tir.f16_byte(sb[2], 1, T)
                    o[vi, base + 2] = tir.f16_byte(sb[3], 0, T)
                    o[vi, base + 3] = tir.f16_byte(sb[3], 1, T)
                    o[vi, T.ramp(base + 4, 1, 4)] = T.Cast("uint8x4", ls[T.ramp(0, 1, 4)] | T.shift_left(
                        T.shift_right(ls[T.ramp(4, 1, 4)], T.Broadcast(4, 4)), T.Broadcast(6, 4)))
                    o[vi, T.ramp(base + 8, 1, 4)] = T.Cast("uint8x4", lm[T.ramp(0, 1, 4)] | T.shift_left(
                        T.shift_right(lm[T.ramp(4, 1, 4)], T.Broadcast(4, 4)), T.Broadcast(6, 4)))
                    o[vi, T.ramp(base + 12, 1, 4)] = T.Cast("uint8x4", (ls[T.ramp(4, 1, 4)] & T.Broadcast(15, 4))
                                                            | T.shift_left(lm[T.ramp(4, 1, 4)] & T.Broadcast(15, 4),
                                                                           T.Broadcast(4, 4)))
                    for c in T.unroll(4):
                        o[vi, T.ramp(base + qs_at + c * 32, 1, 32)] = T.Cast("uint8x32", (
                            nat[T.ramp(c * 64, 1, 32)] & T.Broadcast(15, 32)) | T.shift_left(
                            nat[T.ramp(c * 64 + 32, 1, 32)] & T.Broadcast(15, 32), T.Broadcast(4, 32)))
                    if kind == Q.Q5_K:
                        o[vi, T.ramp(base + 16, 1, 32)] = T.Broadcast(T.uint8(0), 32)
                        for c in T.unroll(8):
                            o[vi, T.ramp(base + 16, 1, 32)] = o[vi, T.ramp(base + 16, 1, 32)] | T.Cast(
                                "uint8x32", T.shift_left(T.shift_right(nat[T.ramp(c * 32, 1, 32)],
                                                                       T.Broadcast(4, 32)), T.Broadcast(c, 32)))
        bad[vi] = tir.any_lane(fl[T.ramp(0, 1, S)], S, tirx)

    return _rows(source, row)


BUILDERS = {Q.Q4_0: _q32, Q.Q8_0: _q32, Q.Q6_K: lambda kind, source: _q6_k(source), Q.Q4_K: _q_k_asym,
            Q.Q5_K: _q_k_asym}


@functools.cache
def kernel(qtype: Q, stored: str):
    """The compiled kernel for ``qtype`` over rows stored as ``stored`` (BF16/F16/F32), from the kernel cache
    when it is there; None where it cannot be had (no TVM, no compiler)."""
    source = tir.SOURCE[stored]
    text = "\n".join(Path(f).read_text() for f in (__file__, tir.__file__))
    try:
        return cached_kernel(f"gguf-{qtype.name.lower()}-{source}", f"{text}\n{qtype.name} {source}",
                             lambda: tir.build_host(BUILDERS[qtype](qtype, source)))
    except Exception:  # noqa: BLE001 - the numpy path does the same work
        return None


def quantize(rows: np.ndarray, stored: str, qtype: Q) -> np.ndarray | None:
    """GGUF bytes [n, row_bytes] of ``rows`` [n, k] as stored (``stored``: BF16/F16/F32; bfloat16 rows as
    ml_dtypes or uint16 bits), or None: the type or dtype has no kernel, k is not whole blocks, the kernel
    cannot be built here, or a row flagged itself. The caller then runs the numpy quantizer. Writable
    contiguous rows (a copy-on-write memory map) are read in place; others are copied first."""
    if qtype not in BLOCK or stored not in tir.SOURCE or rows.ndim != 2 or rows.shape[1] % BLOCK[qtype]:
        return None
    f = kernel(qtype, stored)
    if f is None:
        return None
    import tvm_ffi

    n, k = rows.shape
    src = rows if rows.flags.c_contiguous and rows.flags.writeable else np.array(rows, order="C")
    if stored == "BF16":
        src = src.view(np.uint16)
    out = np.empty((n, k // BLOCK[qtype] * BLOCK_BYTES[qtype]), np.uint8)
    bad = np.empty((n,), np.int32)
    if n:
        f(*(tvm_ffi.from_dlpack(a) for a in (src, out, bad)))
    return None if bad.any() else out
