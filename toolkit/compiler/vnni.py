"""INT4 x int8 kernels for x86 CPUs with AVX-512 VNNI (``vpdpbusd``: 64 u8 x s8 MACs per instruction).

The float kernels of ``model/quantized_linear.py`` are instruction-bound: unpacking each 4-bit code
to float32 costs more than streaming it from DRAM (decode) or than the FMA itself (prefill). Here
the activations are quantized once per call to int8 with one scale per 32-group (as llama.cpp's Q8
activations), so the product of a group is integer work::

    sum_k x_k (q_k - 7) s_g  ~=  sum_g s_g d_g (sum_{k in g} xq_k q_k - 7 sum_{k in g} xq_k)

with ``xq = round(x / d_g)``, ``d_g = max|x_g| / 127``. Word ``j`` of a weight row holds codes
``8j..8j+7`` (code ``t`` at bits ``4t``): ``w & 0x0F0F0F0F`` is the bytes of its even codes and
``(w >> 4) & 0x0F0F0F0F`` of its odd ones, so x is packed to match once per call: ``xe[j]`` /
``xo[j]`` hold the int8 of x's even / odd positions of word j. The weights stay as MLC stores them.

The error added over the float kernels is that of rounding x to int8 (|err| <= d_g / 2 per
element): used for float16 models only (their tolerance absorbs it), NK weights, float16 scales.
"""
from __future__ import annotations

from functools import reduce

from tvm import tirx
from tvm.script import tirx as T

from mcpm_mobile.model.quantized_linear import ELEMS_PER_WORD, GROUP_SIZE, ROW_ALIGN

WPG = GROUP_SIZE // ELEMS_PER_WORD  # words per group
MASK = 0x0F0F0F0F
PREFETCH = 4096  # uint32 words (16 KiB) ahead of the GEMV's read position: measured best of 0-16384
MT, NT = 6, 32  # matmul register block: 6 rows x 2 vectors of 16 columns (24 of the 32 zmm registers)


def gemv_block(k: int) -> int | None:
    """GEMV words per vector step: 16 (zmm) or 8 (ymm), or None when K does not split."""
    words = k // ELEMS_PER_WORD
    if words * ELEMS_PER_WORD != k:
        return None
    return next((b for b in (16, 8) if words % b == 0), None)


def matmul_fits(n: int, k: int) -> bool:
    return n % NT == 0 and k % GROUP_SIZE == 0


def _dpbusd(lanes, acc, a_u8, b_s8):
    i8v = f"int8x{lanes * 4}"
    return T.call_llvm_pure_intrin(f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{lanes * 32}", acc,
                                   T.reinterpret(i8v, a_u8), T.reinterpret(i8v, b_s8))


def _nibbles(word_vec, lanes):
    """(even codes, odd codes) of a vector of words, one code per byte."""
    mask = T.Broadcast(T.int32(MASK), lanes)
    words = T.reinterpret(f"int32x{lanes}", word_vec)
    return words & mask, T.shift_right(words, T.Broadcast(T.int32(4), lanes)) & mask


def _pack(xq, first):
    """4 int8 (positions first, first+2, first+4, first+6 of a word's 8) in one int32, lowest first."""
    return (xq[first] & 255) | ((xq[first + 2] & 255) << 8) | ((xq[first + 4] & 255) << 16) | (xq[first + 6] << 24)


def _quantizer(k: int):
    """A TVMScript macro that quantizes row ``r`` of x [.., k]: per word j, the packed int8 of its even
    (``xe``) and odd (``xo``) positions and ``xz = -7 * sum`` of its 8 int8; per group g, the scale ``xd``."""
    words, groups = k // ELEMS_PER_WORD, k // GROUP_SIZE

    @T.macro(hygienic=False)
    def quantize_row(x, r, xe, xo, xz, xd, xq, amax):
        for g in range(groups):
            amax[0] = T.float32(0)
            for t in range(GROUP_SIZE):
                amax[0] = T.max(amax[0], T.fabs(T.Cast("float32", x[r * k + g * GROUP_SIZE + t])))
            for jw in range(WPG):
                for t in T.unroll(ELEMS_PER_WORD):
                    xq[t] = T.Cast("int32", T.round(
                        T.Cast("float32", x[r * k + (g * WPG + jw) * ELEMS_PER_WORD + t])
                        * T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))))
                xe[r * words + g * WPG + jw] = _pack(xq, 0)
                xo[r * words + g * WPG + jw] = _pack(xq, 1)
                xz[r * words + g * WPG + jw] = (xq[0] + xq[1] + xq[2] + xq[3] + xq[4] + xq[5] + xq[6] + xq[7]) * -7
            xd[r * groups + g] = amax[0] / T.float32(127)

    return quantize_row


def gemv(n: int, k: int, lead: tuple, x_dtype: str, s_dtype: str, out_dtype: str) -> tirx.PrimFunc:
    """Decode: ``out[*lead, n] = x[*lead, k] @ W^T`` for one row of x (W: q_weight [n, k/8], q_scale [n, k/32]).

    Rows are split over threads in 64 contiguous ranges and read strictly in memory order, one row
    at a time, with a software prefetch 16 KiB ahead: rows interleaved 4 at a time (one x load for 4
    rows) stream at 20 GB/s from DRAM, one at a time at 30, with the prefetch 34 (2 Zen 5 cores).
    Per vector of words: ``and``, ``shift+and``, two ``vpdpbusd`` (starting from the word's
    zero-point term ``xz``), one convert and one FMA with the lane-expanded product of both scales.
    """
    lanes = gemv_block(k)
    assert lanes is not None and all(int(d) == 1 for d in lead)
    words, groups = k // ELEMS_PER_WORD, k // GROUP_SIZE
    steps, gps = words // lanes, lanes // WPG  # vector steps per row, groups per step
    n_pad = -(-n // ROW_ALIGN) * ROW_ALIGN
    tasks = min(n_pad, 64)
    per_task = -(-n_pad // tasks)
    expand = [j // WPG for j in range(lanes)]
    x_shape, out_shape = (*lead, k), (*lead, n)
    quantize_row = _quantizer(k)

    def vec(buf, start):
        return buf[T.ramp(start, 1, lanes)]

    def hsum(v):
        width = lanes
        while width > 1:
            width //= 2
            v = tirx.Shuffle([v], list(range(width))) + tirx.Shuffle([v], list(range(width, 2 * width)))
        return v

    def step(w, s, xe, xo, xz, xd, row, b):
        lo, hi = _nibbles(w[row, T.ramp(b * lanes, 1, lanes)], lanes)
        dot = _dpbusd(lanes, _dpbusd(lanes, vec(xz, b * lanes), lo, vec(xe, b * lanes)), hi, vec(xo, b * lanes))
        scales = T.Cast(f"float32x{gps}", s[row, T.ramp(b * gps, 1, gps)]) * xd[T.ramp(b * gps, 1, gps)]
        return T.Cast(f"float32x{lanes}", dot) * T.Shuffle([scales] * 4, expand)

    @T.prim_func(private=True, check_well_formed=False)
    def func(x_h: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, groups), s_dtype), o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x_in = T.match_buffer(x_h, x_shape, x_dtype)
        out_in = T.match_buffer(o_h, out_shape, out_dtype)
        x = T.decl_buffer((k,), x_dtype, data=x_in.data)
        out = T.decl_buffer((n,), out_dtype, data=out_in.data)
        w_flat = T.decl_buffer((n * words + PREFETCH,), "uint32", data=w.data)  # prefetch addresses only
        xe = T.alloc_buffer((words,), "int32")
        xo = T.alloc_buffer((words,), "int32")
        xz = T.alloc_buffer((words,), "int32")
        xd = T.alloc_buffer((groups,), "float32")
        xq = T.alloc_local((ELEMS_PER_WORD,), "int32")
        amax = T.alloc_local((1,), "float32")
        with T.sblock("root"):
            T.reads()
            T.writes()
            quantize_row(x, 0, xe, xo, xz, xd, xq, amax)
            for task in T.parallel(tasks):
                acc = T.alloc_local((lanes,), "float32")
                for i in range(per_task):
                    if task * per_task + i < n_pad:
                        acc[T.ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
                        for b in range(steps):
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.prefetch",
                                T.address_of(w_flat[T.min(task * per_task + i, n - 1) * words + b * lanes + PREFETCH]),
                                T.int32(0), T.int32(3), T.int32(1)))
                            acc[T.ramp(0, 1, lanes)] = acc[T.ramp(0, 1, lanes)] + step(
                                w, s, xe, xo, xz, xd, T.min(task * per_task + i, n - 1), b)
                        if task * per_task + i < n:
                            out[task * per_task + i] = T.Cast(out_dtype, hsum(acc[T.ramp(0, 1, lanes)]))

    return func


def matmul(n: int, k: int, lead: tuple, x_dtype: str, s_dtype: str, out_dtype: str) -> tirx.PrimFunc:
    """Prefill / batch: ``out[*lead, n] = x[*lead, k] @ W^T`` for any number of rows (``lead`` may be symbolic).

    x is quantized row by row (in parallel). Per 32-column tile of W (tiles over threads) the
    tile's words are transposed into a column-major scratch (``wt[j, c]``: no nibble work, the
    codes stay packed) with its scales; then each 6-row block of x runs the whole K with 6 x 2
    vector accumulators: per word, 4 ``vpdpbusd`` per row against broadcast x words, and per group
    one convert and one FMA with the column scales x the row's activation scale.
    """
    assert matmul_fits(n, k)
    words, groups = k // ELEMS_PER_WORD, k // GROUP_SIZE
    m = reduce(lambda a, b: a * b, lead)
    x_shape, out_shape = (*lead, k), (*lead, n)
    lanes = NT // 2
    quantize_row = _quantizer(k)

    def group_zero(xz, row, g):
        return sum(xz[row * words + g * WPG + t] for t in range(WPG))

    def bcast(v):
        return T.Broadcast(v, lanes)

    def col(buf, start):
        return buf[T.ramp(start, 1, lanes)]

    @T.prim_func(private=True, check_well_formed=False)
    def func(x_h: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, groups), s_dtype), o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x_in = T.match_buffer(x_h, x_shape, x_dtype)
        out_in = T.match_buffer(o_h, out_shape, out_dtype)
        x = T.decl_buffer((m * k,), x_dtype, data=x_in.data)
        out = T.decl_buffer((m * n,), out_dtype, data=out_in.data)
        xe = T.alloc_buffer((m * words,), "int32")
        xo = T.alloc_buffer((m * words,), "int32")
        xz = T.alloc_buffer((m * words,), "int32")
        xd = T.alloc_buffer((m * groups,), "float32")
        with T.sblock("root"):
            T.reads()
            T.writes()
            for r in T.parallel(m):
                xq = T.alloc_local((ELEMS_PER_WORD,), "int32")
                amax = T.alloc_local((1,), "float32")
                quantize_row(x, r, xe, xo, xz, xd, xq, amax)
            for tile in T.parallel(n // NT):
                wt = T.alloc_buffer((words * NT,), "uint32")
                st = T.alloc_buffer((groups * NT,), "float32")
                facc = T.alloc_local((MT * NT,), "float32")
                iacc = T.alloc_local((MT * NT,), "int32")
                for c, j in T.grid(NT, words):
                    wt[j * NT + c] = w[tile * NT + c, j]
                for c, g in T.grid(NT, groups):
                    st[g * NT + c] = T.Cast("float32", s[tile * NT + c, g])
                for mb in range((m + MT - 1) // MT):
                    for a in T.unroll(MT * 2):
                        facc[T.ramp(a * lanes, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
                    for g in range(groups):
                        for i, v in T.grid(MT, 2):
                            iacc[T.ramp((i * 2 + v) * lanes, 1, lanes)] = bcast(group_zero(xz, T.min(mb * MT + i, m - 1), g))
                        for jw in range(WPG):
                            for i in T.unroll(MT):
                                for v in T.unroll(2):
                                    iacc[T.ramp((i * 2 + v) * lanes, 1, lanes)] = _dpbusd(
                                        lanes,
                                        _dpbusd(lanes, iacc[T.ramp((i * 2 + v) * lanes, 1, lanes)],
                                                _nibbles(col(wt, (g * WPG + jw) * NT + v * lanes), lanes)[0],
                                                bcast(xe[T.min(mb * MT + i, m - 1) * words + g * WPG + jw])),
                                        _nibbles(col(wt, (g * WPG + jw) * NT + v * lanes), lanes)[1],
                                        bcast(xo[T.min(mb * MT + i, m - 1) * words + g * WPG + jw]))
                        for i in T.unroll(MT):
                            for v in T.unroll(2):
                                facc[T.ramp((i * 2 + v) * lanes, 1, lanes)] = (
                                    facc[T.ramp((i * 2 + v) * lanes, 1, lanes)]
                                    + T.Cast(f"float32x{lanes}", iacc[T.ramp((i * 2 + v) * lanes, 1, lanes)])
                                    * (col(st, g * NT + v * lanes) * bcast(xd[T.min(mb * MT + i, m - 1) * groups + g])))
                    for i in T.unroll(MT):
                        if mb * MT + i < m:
                            for v in T.unroll(2):
                                out[T.ramp((mb * MT + i) * n + tile * NT + v * lanes, 1, lanes)] = T.Cast(
                                    f"{out_dtype}x{lanes}", facc[T.ramp((i * 2 + v) * lanes, 1, lanes)])

    return func
