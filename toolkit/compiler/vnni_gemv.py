"""Decode GEMV for x86 CPUs with AVX-512 VNNI: int8 activations x INT4 weights with ``vpdpbusd``.

The float GEMV (``quantized_linear.grouped_gemv_nk``) is instruction-bound: unpacking each 4-bit code
to float32 costs more than streaming it from DRAM. Here the activations are quantized once per call
to int8 with one scale per 32-group (as llama.cpp's Q8 activations), so that the inner product of a
group is integer work: per 16 words (128 weights) of a row, ``and``, ``shift+and`` and two
``vpdpbusd`` (64 u8 x s8 MACs each), then one convert and one FMA apply both scales::

    sum_k x_k (q_k - 7) s_g  ~=  sum_g s_g d_g (sum_{k in g} xq_k q_k - 7 sum_{k in g} xq_k)

with ``xq = round(x / d_g)``, ``d_g = max|x_g| / 127``. Word ``j`` of a row holds codes ``8j..8j+7``
(code ``s`` at bits ``4s``): ``w & 0x0F0F0F0F`` is the bytes of the even codes, ``(w >> 4) & ..``
the odd ones, so x is packed once per call into ``xe[j]`` / ``xo[j]`` (4 int8 each, same order),
with ``xz[j] = -7 * sum_s xq[8j+s]`` (the zero-point term, the accumulator's start value) and
``xd[j] = d_(j/4)`` (the activation scale of word j's group, lane-expanded).

The error added over the float GEMV is that of int8 rounding of x (|err| <= d_g / 2 per element).
Used for one-row NK kernels with float16/float32 scales when the target has ``avx512vnni``.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from mcpm_mobile.model.quantized_linear import ELEMS_PER_WORD, GROUP_SIZE, ROW_ALIGN

WORDS_PER_GROUP = GROUP_SIZE // ELEMS_PER_WORD
ROWS = 1  # rows per x load
PREFETCH = 4096  # uint32 words (16 KiB) ahead of the row being read: measured best of 0-16384


def block_words(k: int) -> int | None:
    """uint32 words per vector step: 16 (zmm) or 8 (ymm), or None when K does not split."""
    words = k // ELEMS_PER_WORD
    if words * ELEMS_PER_WORD != k:
        return None
    return next((b for b in (16, 8) if words % b == 0), None)


def vnni_gemv(n: int, k: int, lead: tuple, x_dtype: str, s_dtype: str, out_dtype: str) -> tirx.PrimFunc:
    """``out[*lead, n] = x[*lead, k] @ W^T`` for one row of x; W as q_weight [n, k/8], q_scale [n, k/32]."""
    block = block_words(k)
    assert block is not None and all(d == 1 for d in lead)
    words, groups = k // ELEMS_PER_WORD, k // GROUP_SIZE
    nb = words // block
    gpb = block // WORDS_PER_GROUP  # groups per step
    n_pad = -(-n // ROW_ALIGN) * ROW_ALIGN
    lanes = block
    bits = 32 * lanes
    dpbusd = f"llvm.x86.avx512.vpdpbusd.{bits}"
    i32v, f32v, i8v = f"int32x{lanes}", f"float32x{lanes}", f"int8x{lanes * 4}"
    expand = [j // WORDS_PER_GROUP for j in range(lanes)]
    x_shape, out_shape = (*lead, k), (*lead, n)
    mask = 0x0F0F0F0F
    row_blocks = n_pad // ROWS
    tasks = min(row_blocks, 64)  # parallel tasks: each keeps its accumulators for many row blocks
    per_task = -(-row_blocks // tasks)

    def hsum(acc, r):
        """Sum of the lanes of accumulator ``r`` by halving (log2(lanes) shuffles + adds)."""
        v, width = acc[tirx.Ramp(r * lanes, 1, lanes)], lanes
        while width > 1:
            width //= 2
            v = tirx.Shuffle([v], list(range(width))) + tirx.Shuffle([v], list(range(width, 2 * width)))
        return v

    @T.prim_func(private=True, check_well_formed=False)
    def func(x_h: T.handle, w: T.Buffer((n, words), "uint32"), s: T.Buffer((n, groups), s_dtype), o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        x_in = T.match_buffer(x_h, x_shape, x_dtype)
        out_in = T.match_buffer(o_h, out_shape, out_dtype)
        x = T.decl_buffer((k,), x_dtype, data=x_in.data)
        out = T.decl_buffer((n,), out_dtype, data=out_in.data)
        wf = T.decl_buffer((n * words + PREFETCH,), "uint32", data=w.data)
        xe = T.alloc_buffer((words,), "int32")
        xo = T.alloc_buffer((words,), "int32")
        xz = T.alloc_buffer((words,), "int32")
        xd = T.alloc_buffer((words,), "float32")
        xq = T.alloc_buffer((ELEMS_PER_WORD,), "int32", scope="local")
        amax = T.alloc_buffer((1,), "float32", scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes()
            for g in range(groups):
                amax[0] = T.float32(0)
                for t in range(GROUP_SIZE):
                    amax[0] = T.max(amax[0], T.fabs(T.Cast("float32", x[g * GROUP_SIZE + t])))
                for jw in range(WORDS_PER_GROUP):
                    j = g * WORDS_PER_GROUP + jw
                    for t in T.unroll(ELEMS_PER_WORD):
                        xq[t] = T.Cast("int32", T.round(T.Cast("float32", x[j * ELEMS_PER_WORD + t])
                                                         * T.if_then_else(amax[0] > T.float32(0),
                                                                          T.float32(127) / amax[0], T.float32(0))))
                    xe[j] = ((xq[0] & 255) | ((xq[2] & 255) << 8) | ((xq[4] & 255) << 16) | (xq[6] << 24))
                    xo[j] = ((xq[1] & 255) | ((xq[3] & 255) << 8) | ((xq[5] & 255) << 16) | (xq[7] << 24))
                    xz[j] = (xq[0] + xq[1] + xq[2] + xq[3] + xq[4] + xq[5] + xq[6] + xq[7]) * -7
                    xd[j] = amax[0] / T.float32(127)
            for task in T.parallel(tasks):
                acc = T.alloc_local((ROWS * lanes,), "float32")
                for blk in range(per_task):
                    if task * per_task + blk < row_blocks:
                        for r in T.unroll(ROWS):
                            acc[T.ramp(r * lanes, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
                        for b in range(nb):
                            T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(wf[T.min((task * per_task + blk) * ROWS, n - 1) * words + b * block + PREFETCH]), T.int32(0), T.int32(3), T.int32(1)))
                            for r in T.unroll(ROWS):
                                acc[T.ramp(r * lanes, 1, lanes)] = acc[T.ramp(r * lanes, 1, lanes)] + T.Cast(f32v, T.call_llvm_pure_intrin(
                                    i32v, dpbusd,
                                    T.call_llvm_pure_intrin(
                                        i32v, dpbusd, xz[T.ramp(b * block, 1, lanes)],
                                        T.reinterpret(i8v, T.reinterpret(i32v, w[T.min((task * per_task + blk) * ROWS + r, n - 1), T.ramp(b * block, 1, lanes)]) & T.Broadcast(T.int32(mask), lanes)),
                                        T.reinterpret(i8v, xe[T.ramp(b * block, 1, lanes)])),
                                    T.reinterpret(i8v, T.shift_right(T.reinterpret(i32v, w[T.min((task * per_task + blk) * ROWS + r, n - 1), T.ramp(b * block, 1, lanes)]), T.Broadcast(T.int32(4), lanes)) & T.Broadcast(T.int32(mask), lanes)),
                                    T.reinterpret(i8v, xo[T.ramp(b * block, 1, lanes)]))) * (T.Shuffle([T.Cast(f"float32x{gpb}", s[T.min((task * per_task + blk) * ROWS + r, n - 1), T.ramp(b * gpb, 1, gpb)])] * 4, expand) * xd[T.ramp(b * block, 1, lanes)])
                        for r in T.unroll(ROWS):
                            if (task * per_task + blk) * ROWS + r < n:
                                out[(task * per_task + blk) * ROWS + r] = T.Cast(out_dtype, hsum(acc, r))

    return func
