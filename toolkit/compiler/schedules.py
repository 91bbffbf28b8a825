"""Target-specific schedules: the one place where kernels are tuned for a target.

``schedule_rules(target)`` returns the dlight rules applied (in order) to every unscheduled
PrimFunc after fusion. For CPU (llvm) these are our own rules for the model's
``dequantize_matmul`` / ``dequantize_take`` kernels (see ``model/quantized_linear.py``) followed by a
generic rule that parallelises and vectorises the remaining spatial and reduction kernels.
GPU targets are added by returning dlight's ``gpu`` rules here (not done yet).
"""
from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target


def is_cpu(target: Target) -> bool:
    return target.kind.name == "llvm"


def schedule_rules(target: Target) -> list[ScheduleRule]:
    if is_cpu(target):
        return [CPUDequantizeMatmul(), CPUDequantizeTake(), CPUGeneric()]
    raise NotImplementedError(f"no schedules for target kind '{target.kind.name}' yet")


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _vector_lanes(target: Target) -> int:
    """float32 lanes of the widest vector unit (AVX-512: 16, AVX2/NEON: 8 or 4)."""
    keys = str(target.attrs.get("mcpu", "")) + " " + " ".join(str(a) for a in target.attrs.get("mattr", []))
    if "avx512" in keys or any(k in keys for k in ("znver4", "znver5", "skylake-avx512", "sapphirerapids",
                                                   "icelake", "cascadelake", "tigerlake")):
        return 16
    if target.attrs.get("mtriple", "") and "aarch64" in str(target.attrs["mtriple"]):
        return 4
    return 8


def _narrow(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """int32 index arithmetic (Relax shapes are int64), which LLVM vectorises better; static shapes only."""
    return tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]


def _try_get(sch, name):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - not present
        return None


class CPUDequantizeMatmul(ScheduleRule):
    """``matmul[..., n] = sum_k x[..., k] * dequantize(W)[n, k]`` (+ optional cast).

    * one row of activations (decode): a memory-bound GEMV. The dequantization is inlined into
      the reduction, rows of W are split across threads, and the reduction is vectorised along K
      (NK / plain layouts: an rfactor of 8 or 16 K-lanes kept in registers) or along N (KN layout,
      where consecutive outputs are consecutive words).
    * several rows (prefill, batch): a tiled matmul. Per tile of N-columns, the W tile is
      dequantized once into a K-major scratch buffer, then every row of x is multiplied with it
      with vector FMAs along N. Tiles are distributed across threads.
    """

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
            return None
        if func.attrs is None or func.attrs.get("mcpm.kernel") != "dequantize_matmul":
            return None
        layout = str(func.attrs["mcpm.layout"])
        static = all(isinstance(d, tirx.IntImm) for b in func.params if isinstance(b, tirx.Buffer) for d in b.shape)
        sch = s_tir.Schedule(_narrow(func) if static else func)
        mm = sch.get_sblock("matmul")
        loops = sch.get_loops(mm)
        rows = 1
        for lp in loops[:-2]:
            e = _extent(sch, lp)
            rows = None if (e is None or rows is None) else rows * e
        lanes = _vector_lanes(target)
        if rows == 1:
            if layout == "KN":
                return self._gemv_outer(sch, lanes)
            return self._gemv_inner(sch, lanes)
        return self._matmul(sch, lanes, layout)

    @staticmethod
    def _epilogue(sch, loop):
        cast = _try_get(sch, "cast")
        if cast is not None:
            sch.reverse_compute_at(cast, loop)

    def _gemv_inner(self, sch, lanes):
        deq, mm = sch.get_sblock("dequantize"), sch.get_sblock("matmul")
        sch.compute_inline(deq)
        *lead, n, k = sch.get_loops(mm)
        kext = _extent(sch, k)
        vl = lanes if kext % lanes == 0 else (8 if kext % 8 == 0 else 1)
        if vl == 1:
            return self._gemv_simple(sch)
        ko, ki = sch.split(k, [None, vl])
        rf = sch.rfactor(ki, 0)
        *lead, n, ko, ki = sch.get_loops(rf)
        no, nr = sch.split(n, [None, 4])  # 4 rows share each x vector; a tail row block is predicated
        sch.reorder(no, ko, nr, ki)
        sch.parallel(no)
        sch.unroll(nr)
        sch.vectorize(ki)
        sch.set_scope(rf, 0, "local")
        sch.decompose_reduction(rf, ko)
        sch.reverse_compute_at(mm, no)
        self._epilogue(sch, no)
        return sch

    def _gemv_simple(self, sch):
        mm = sch.get_sblock("matmul")
        *lead, n, k = sch.get_loops(mm)
        sch.parallel(n)
        self._epilogue(sch, n)
        return sch

    def _gemv_outer(self, sch, lanes):
        deq, mm = sch.get_sblock("dequantize"), sch.get_sblock("matmul")
        sch.compute_inline(deq)
        *lead, n, k = sch.get_loops(mm)
        next_ = _extent(sch, n)
        tile = lanes * 4 if next_ % (lanes * 4) == 0 else (lanes if next_ % lanes == 0 else 1)
        if tile == 1:
            return self._gemv_simple(sch)
        no, ni = sch.split(n, [None, tile])
        sch.reorder(no, k, ni)
        acc = sch.cache_write(mm, 0, "local")
        sch.reverse_compute_at(acc, no)
        sch.parallel(no)
        sch.vectorize(ni)
        sch.decompose_reduction(mm, k)
        sch.vectorize(sch.get_loops(acc)[-1])
        self._epilogue(sch, no)
        return sch

    def _matmul(self, sch, lanes, layout):
        deq, mm = sch.get_sblock("dequantize"), sch.get_sblock("matmul")
        *lead, n, k = sch.get_loops(mm)
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        next_, kext = _extent(sch, n), _extent(sch, k)
        nt = lanes * 2 if next_ % (lanes * 2) == 0 else (lanes if next_ % lanes == 0 else 1)
        if nt == 1:
            return self._matmul_simple(sch, m, n)
        mt = 6  # 6 rows x 2 vectors = 12 accumulators (measured best of 4/6/8 on AVX-512)
        no, ni = sch.split(n, [None, nt])
        mo, mi = sch.split(m, [None, mt])
        sch.reorder(no, mo, k, mi, ni)
        acc = sch.cache_write(mm, 0, "local")
        sch.reverse_compute_at(acc, mo)
        sch.parallel(no)
        sch.unroll(mi)
        sch.vectorize(ni)
        sch.decompose_reduction(mm, k)
        # dequantize one [nt, K] tile of W per `no`, stored K-major so that `ni` is contiguous
        sch.compute_at(deq, no)
        sch.transform_layout(deq, ("write", 0), lambda a, b: (b, a))
        dl_ = sch.get_loops(deq)
        dn, dk = dl_[-2], dl_[-1]
        sch.reorder(dk, dn)
        if layout == "KN":
            sch.vectorize(dn)
        sch.set_scope(deq, 0, "global")
        self._epilogue(sch, mo)
        return sch

    def _matmul_simple(self, sch, m, n):
        deq = sch.get_sblock("dequantize")
        sch.compute_inline(deq)
        sch.parallel(m)
        return sch


class CPUDequantizeTake(ScheduleRule):
    """Embedding rows: parallel over tokens, vectorised along the hidden dim."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
            return None
        if func.attrs is None or func.attrs.get("mcpm.kernel") != "dequantize_take":
            return None
        sch = s_tir.Schedule(func)
        blk = sch.get_sblock("take")
        i, h = sch.get_loops(blk)
        hext = _extent(sch, h)
        if hext % 8 == 0:
            _, hi = sch.split(h, [None, 8])
            sch.vectorize(hi)
        return sch


class CPUGeneric(ScheduleRule):
    """Everything else (norms, elementwise, softmax, index): parallelise the outer spatial loop.

    The leading spatial loops of each top-level block are fused and run in parallel when their
    extent is large enough to pay for it, and the innermost spatial loop is vectorised when the
    block is injective. Kernels that already carry their own schedule (TVM's KV-cache kernels)
    are marked scheduled and never reach here.
    """

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
        except Exception:  # noqa: BLE001 - opaque / block-less function: leave as is
            return None
        if len(blocks) != 1:
            return None
        blk = blocks[0]
        try:
            loops = sch.get_loops(blk)
            iters = sch.get(blk).iter_vars
        except Exception:  # noqa: BLE001
            return None
        if not loops or len(loops) != len(iters):
            return None
        spatial = []
        for lp, iv in zip(loops, iters):
            if iv.iter_type != tirx.IterVar.DataPar:
                break
            spatial.append(lp)
        if not spatial:
            return None
        if len(spatial) > 1:
            outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
        else:
            outer = spatial[0]
        sch.parallel(outer)
        return sch
