"""MLC's INT4 group quantization (``quantize/group.py``'s arithmetic, bit for bit) as one compiled host kernel.

The numpy version makes ~15 passes over each float32 block (casts, scale, divide, round, clip, pack); this
kernel reads each row once: per group of 32, the float16 rounding of the inputs, max|x| / 7 rounded to the
model dtype, the codes ``nearbyint(dtype(dtype(x / scale) + 7))`` clipped to 0..14 (all-zero group: scale 0,
code 7), and the 8 codes of each word ORed together by shuffles. Rows run on TVM's thread pool
(``TVM_NUM_THREADS``). Built once per (stored dtype, model dtype) on a machine and kept in the kernel cache
(``support/cache.py``); it reads the rows where they lie (a memory map) and writes into the caller's arrays.
Where TVM cannot run, the caller takes the numpy path (``quantize/group.py``).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mcpm_mobile.kernels import tir
from mcpm_mobile.support.cache import cached_kernel

GROUP, WORD, LANES = 32, 8, 16
SOURCE = tir.SOURCE  # safetensors dtype -> kernel input


@functools.cache
def build(source: str, dtype: str):
    """The kernel :func:`compile_kernel` builds, from the kernel cache when it is there."""
    text = "\n".join(Path(f).read_text() for f in (__file__, tir.__file__))
    return cached_kernel(f"mlc-group-{source}-{dtype}", f"{text}\n{source} {dtype}",
                         lambda: compile_kernel(source, dtype))


def compile_kernel(source: str, dtype: str):
    """The compiled kernel ``f(w [n, k], q uint32 [n, k/8], s dtype [n, k/32], bad int32 [n])`` for any n and
    k % 32 == 0; ``source`` is the stored dtype (bfloat16 is read as its uint16 bits). ``bad[i]`` is 1 when
    row i holds a NaN or Inf, or a value beyond float16's range for a float16 model (its codes are then
    meaningless: the caller sends the rows through the numpy path, which reports them)."""
    from tvm import tirx
    from tvm.script import tirx as T

    def load(v):
        return tir.load_f32(v, source, GROUP, T)

    def nonfinite(x):
        """1 where a lane is NaN/Inf or, for a float16 model, beyond float16's range (what ``_in_range`` refuses)."""
        flag = tir.not_finite(x, GROUP, T)
        if dtype == "float16":
            flag = flag | (T.fabs(x) > T.Broadcast(T.float32(65504), GROUP))
        return tir.any_lane(T.Cast(f"int32x{GROUP}", flag), GROUP, tirx)

    def rnd(x, lanes):  # round through the model dtype, as numpy's astype(dtype).astype(float32)
        return T.Cast(f"float32x{lanes}", T.Cast(f"{dtype}x{lanes}", x)) if dtype != "float32" else x

    def amax(x):
        return tir.fold_all(T.fabs(x), GROUP, T.max, tirx)

    def codes(x, d, zero):
        c = T.nearbyint(rnd(rnd(x / T.Broadcast(d, GROUP), GROUP) + T.Broadcast(T.float32(7), GROUP), GROUP))
        c = T.min(T.max(c, T.Broadcast(T.float32(0), GROUP)), T.Broadcast(T.float32(14), GROUP))
        return T.Select(T.Broadcast(zero, GROUP), T.Broadcast(T.float32(7), GROUP), c)

    def pack(c):
        shifts = tirx.Shuffle([T.Broadcast(T.uint32(4), GROUP) * T.Cast(f"uint32x{GROUP}", T.ramp(0, 1, GROUP))],
                              [t % WORD for t in range(GROUP)])
        return tir.fold_all(T.shift_left(T.Cast(f"uint32x{GROUP}", c), shifts), GROUP, lambda a, b: a | b, tirx,
                            until=GROUP // WORD)

    @T.prim_func(private=True, s_tir=True)
    def quant(w_h: T.handle, q_h: T.handle, s_h: T.handle, bad_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n, groups = T.int64(), T.int64()
        w = T.match_buffer(w_h, (n, groups * GROUP), source, align=1)
        q = T.match_buffer(q_h, (n, groups * (GROUP // WORD)), "uint32", align=1)
        s = T.match_buffer(s_h, (n, groups), dtype, align=1)
        bad = T.match_buffer(bad_h, (n,), "int32", align=1)
        for i in T.parallel(n):
            with T.sblock("row"):
                vi = T.axis.spatial(n, i)
                T.reads()
                T.writes()
                st = T.sblock_alloc_buffer((2,), "float32")  # scale as stored, divisor
                bad[vi] = 0
                for g in range(groups):
                    bad[vi] = bad[vi] | nonfinite(load(w[vi, T.ramp(g * GROUP, 1, GROUP)]))
                    st[0] = T.Cast("float32", T.Cast(dtype, amax(rnd(load(w[vi, T.ramp(g * GROUP, 1, GROUP)]), GROUP))
                                                     / T.float32(7)))
                    st[1] = T.if_then_else(st[0] == T.float32(0), T.float32(1), st[0])
                    q[vi, T.ramp(g * (GROUP // WORD), 1, GROUP // WORD)] = pack(codes(
                        rnd(load(w[vi, T.ramp(g * GROUP, 1, GROUP)]), GROUP), st[1], st[0] == T.float32(0)))
                    s[vi, g] = T.Cast(dtype, st[0])

    return tir.build_host(quant)


def quantize(rows: np.ndarray, stored: str, dtype: str, q: np.ndarray | None = None, s: np.ndarray | None = None):
    """(q_weight, q_scale, finite) of ``rows`` [n, k] as stored on disk (``stored``: the checkpoint's dtype name,
    BF16/F16/F32; bfloat16 rows as ml_dtypes or uint16 bits), written into ``q`` [n, k/8] and ``s`` [n, k/32]
    when given; None when the kernel cannot run here (no TVM, k % 32, unknown dtype). Writable contiguous rows
    (a copy-on-write memory map) are read in place; others are copied first."""
    if stored not in SOURCE or rows.shape[1] % GROUP:
        return None
    try:
        import tvm_ffi

        f = build(SOURCE[stored], dtype)
    except Exception:  # noqa: BLE001 - no TVM / no compiler here: the numpy path does the same work
        return None
    n, k = rows.shape
    src = rows if rows.flags.c_contiguous and rows.flags.writeable else np.array(rows, order="C")
    src = src.view(np.uint16) if stored == "BF16" else src
    q = np.empty((n, k // WORD), np.uint32) if q is None else q
    s = np.empty((n, k // GROUP), dtype) if s is None else s
    bad = np.empty((n,), np.int32)
    f(*(tvm_ffi.from_dlpack(a) for a in (src, q, s, bad)))
    return q, s, not bad.any()
