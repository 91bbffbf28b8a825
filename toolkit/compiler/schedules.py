"""Target-specific schedules: the one place where kernels are tuned for a target.

``schedule_rules(target)`` returns the dlight rules applied (in order) to every unscheduled
PrimFunc after fusion. For CPU (llvm) these are our own rules for the model's
``dequantize_matmul`` / ``dequantize_take`` kernels (see ``model/quantized_linear.py``) followed by a
generic rule that parallelises and vectorises the remaining spatial and reduction kernels.
GPU targets get dlight's ``gpu`` rules (see ``gpu.py``).
"""
from __future__ import annotations

import tvm
from tvm import s_tir, te, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target


def is_cpu(target: Target) -> bool:
    return target.kind.name == "llvm"


def schedule_rules(target: Target) -> list[ScheduleRule]:
    if is_cpu(target):
        return [CPUDequantizeMatmul(), CPUDequantizeTake(), CPUElementwise(), CPUGeneric()]
    from mcpm_mobile.compiler import gpu

    return gpu.schedule_rules(target)


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
        int8 = self._vnni(func, target, rows == 1) if layout == "NK" else None
        if int8 is not None:
            return int8
        if rows == 1:
            grouped = self._grouped_gemv(func, lanes) if layout == "NK" and static else None
            if grouped is not None:
                return grouped
            if layout == "KN":
                return self._gemv_outer(sch, lanes)
            return self._gemv_inner(sch, lanes)
        return self._matmul(sch, lanes, layout)

    @staticmethod
    def _operands(func):
        """The x, q_weight, q_scale and output buffers of an NK kernel, or None."""
        if len(func.params) != 4:
            return None
        probe = s_tir.Schedule(func)
        deq_reads = [r.source for r in probe.get(probe.get_sblock("dequantize")).reads]
        wb = next((b for b in deq_reads if str(b.dtype) == "uint32"), None)
        sb = next((b for b in deq_reads if str(b.dtype) != "uint32"), None)
        first = _try_get(probe, "x_f32") or probe.get_sblock("matmul")
        xb = next((r.source for r in probe.get(first).reads if r.source.name not in ("dequantize", "x_f32")), None)
        blocks = probe.get_child_blocks(probe.get_sblock("root"))
        ob = probe.get(blocks[-1]).writes[0].source
        if wb is None or sb is None or xb is None:
            return None
        return xb, wb, sb, ob

    def _vnni(self, func, target, one_row: bool):
        """The int8-activation kernels of ``compiler/vnni.py`` where the CPU has AVX-512 VNNI, for
        float16 models (their tolerance absorbs int8 activations; float32 models stay exact); None
        elsewhere or when the shape does not fit their vector blocks."""
        from tvm.target import codegen

        from mcpm_mobile.compiler import vnni

        if not codegen.target_has_features(["avx512vnni", "avx512vl", "avx512bw"], target):
            return None
        ops = self._operands(func)
        if ops is None or str(ops[2].dtype) != "float16":
            return None
        xb, _, _, ob = ops
        k, n = int(xb.shape[-1]), int(ob.shape[-1])
        lead = tuple(xb.shape[:-1])
        if one_row and vnni.gemv_block(k) is not None:
            new = vnni.gemv(n, k, tuple(int(d) for d in lead), str(xb.dtype), "float16", str(ob.dtype))
        elif not one_row and vnni.matmul_fits(n, k):
            new = vnni.matmul(n, k, lead, str(xb.dtype), "float16", str(ob.dtype))
        else:
            return None
        return s_tir.Schedule(new.with_attrs({k_: v for k_, v in func.attrs.items()}))

    def _grouped_gemv(self, func, lanes):
        """Decode GEMV on NK weights with the group scale applied once per word, not once per weight.

        The PrimFunc is replaced by the equivalent ``quantized_linear.grouped_gemv_nk`` form (same
        parameters and result; see its docstring for the algebra). Schedule: rows in blocks of 4
        (each vector of ``x`` is loaded once for 4 rows), row blocks distributed over threads; per
        step of ``block`` words (one vector) the 8 nibbles are unpacked and FMA'd into ``inner``
        (4 vector accumulators), then one FMA per vector applies the per-lane group scale into
        ``partial`` (the scale vector is built from 4 broadcasts + blends); the lanes are summed
        once per row. ``x_perm``/``x_zero`` (x permuted to the nibble order and its per-word
        zero-point sums, K floats) are computed once per call.

        Inner loop per 16 weights: shift, and, convert, FMA (plus 1/8 of the scale work) instead of
        8 instructions; 181 instead of ~260 instructions per 4 rows x 128 weights (AVX-512).
        Measured on 2 Zen 5 cores, weights streamed from DRAM: gate_up 0.79 -> 0.61 ms, down
        0.49 -> 0.36 ms, the tied lm_head 14.5 -> 5.9 ms. Returns None (the generic GEMV is used)
        when K is not a multiple of 64.
        """
        from mcpm_mobile.model.quantized_linear import grouped_gemv_nk

        ops = self._operands(func)
        if ops is None:
            return None
        xb, wb, sb, ob = ops
        k = int(xb.shape[-1])
        words = k // 8
        # a vector of `block` words per step; at least two steps (TVM drops unit loops, and the
        # schedule below addresses loops by position). Tiny K (the tests) use narrower vectors.
        block = next((b for b in (lanes, lanes // 2, lanes // 4) if b >= 4 and b % 4 == 0 and k % (8 * b) == 0
                      and k // (8 * b) >= 2), None)
        if block is None or words * 8 != k:
            return None
        n = int(ob.shape[-1])
        compute, _ = grouped_gemv_nk(n, k, str(ob.dtype), tuple(int(d) for d in xb.shape[:-1]), block)
        xs_, ws_, ss_ = (te.placeholder([int(d) for d in b.shape], str(b.dtype), b.name) for b in (xb, wb, sb))
        new = te.create_prim_func([xs_, ws_, ss_, compute(xs_, ws_, ss_)])
        new = new.with_attrs({k_: v for k_, v in func.attrs.items()}) if func.attrs else new
        sch = s_tir.Schedule(_narrow(new))
        acc, partial, inner = sch.get_sblock("matmul"), sch.get_sblock("partial"), sch.get_sblock("inner")
        n_loop = sch.get_loops(acc)[0]
        no, nr = sch.split(n_loop, [None, 4])
        sch.parallel(no)
        sch.compute_at(partial, no)
        pnr, pj, pb = sch.get_loops(partial)[-3:]
        sch.reorder(pb, pnr, pj)
        sch.compute_at(inner, pb)
        inr, ij, isx = sch.get_loops(inner)[-3:]
        sch.reorder(isx, inr, ij)
        sch.unroll(isx)
        sch.unroll(inr)
        sch.vectorize(ij)
        sch.decompose_reduction(inner, isx)
        sch.set_scope(inner, 0, "local")
        sch.unroll(pnr)
        sch.vectorize(pj)
        sch.decompose_reduction(partial, pb)
        sch.set_scope(partial, 0, "local")
        sch.vectorize(sch.get_loops(sch.get_sblock("x_perm"))[-1])
        xz = sch.get_sblock("x_zero")
        zb, zj, zs = sch.get_loops(xz)
        sch.reorder(zs, zj)
        sch.vectorize(zj)
        self._epilogue(sch, no)
        return sch

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
        """Prefill / batch: a K-blocked, register-blocked dequantize-matmul.

        Per thread, a column block of ``nt = 2 vectors`` of W; per ``kc`` (<= 256, a divisor of K)
        slice of K, the [nt, kc] tile of W is dequantized once into a K-major scratch tile
        (32 KiB: stays in L1) and every 6-row block of x is multiplied with it by a 6 x 2-vector
        microkernel (12 accumulators, one broadcast of x per row and k). The partial sums live in
        the float32 ``matmul`` buffer (a [M, nt] column strip per thread, cache-resident) across
        K slices. Without the K blocking the tile is K x nt (295-737 KiB) and falls out of L1/L2:
        2x slower (measured 130-160 -> 280-300 GFLOP/s on 2 Zen 5 cores).
        """
        deq, mm = sch.get_sblock("dequantize"), sch.get_sblock("matmul")
        *lead, n, k = sch.get_loops(mm)
        m = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        next_, kext = _extent(sch, n), _extent(sch, k)
        nt = lanes * 2 if next_ % (lanes * 2) == 0 else (lanes if next_ % lanes == 0 else 1)
        if nt == 1:
            return self._matmul_simple(sch, m, n)
        kc_max = 256
        kc = next((c for c in range(kc_max, 31, -32) if kext % c == 0), kext) if kext > kc_max else kext
        mt = 6  # 6 rows x 2 vectors = 12 accumulators (measured best of 4/6/8/12 on AVX-512)
        no, ni = sch.split(n, [None, nt])
        mo, mi = sch.split(m, [None, mt])
        ko, ki = sch.split(k, [None, kc])
        sch.reorder(no, ko, mo, ki, mi, ni)
        # the row count is dynamic (prefill length): without this the `row < M` check of the
        # 6-row tail sits in the microkernel of every block (2x slower); TVM's LoopPartition
        # splits `mo` into full blocks and one predicated tail block instead
        sch.annotate(mo, "pragma_loop_partition_hint", 1)
        sch.parallel(no)
        sch.unroll(mi)
        sch.vectorize(ni)
        sch.decompose_reduction(mm, ko)
        # dequantize one [nt, kc] tile of W per (no, ko), stored K-major so that `ni` is contiguous
        sch.compute_at(deq, ko)
        sch.transform_layout(deq, ("write", 0), lambda a, b: (b, a))
        dl_ = sch.get_loops(deq)
        dn, dk = dl_[-2], dl_[-1]
        sch.reorder(dk, dn)
        if layout == "KN":
            sch.vectorize(dn)
        sch.set_scope(deq, 0, "global")
        self._epilogue(sch, no)
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


class CPUElementwise(ScheduleRule):
    """Fused element-wise kernels (split + SiLU * up, residual adds, casts): one vectorised loop.

    Every block but the last is inlined; the last one's innermost loop is split into vector lanes and
    the remaining loops are fused into one, run in parallel only when there is enough work to pay for
    waking the pool (prefill, not a decode token's 4096 elements).
    """

    PARALLEL_MIN = 1 << 16  # elements

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not is_cpu(target):
            return None
        if func.attrs is not None and (func.attrs.get("tirx.is_scheduled") or func.attrs.get("mcpm.kernel")
                                       or int(func.attrs.get("op_pattern", 0)) > 2):
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            if len(blocks) < 1 or any(iv.iter_type != tirx.IterVar.DataPar
                                      for b in blocks for iv in sch.get(b).iter_vars):
                return None
            if any(len(sch.get(b).writes) != 1 for b in blocks):
                return None
            for b in blocks[:-1]:
                sch.compute_inline(b)
            last = blocks[-1]
            loops = sch.get_loops(last)
            if not loops or len(loops) != len(sch.get(last).iter_vars):
                return None
        except Exception:  # noqa: BLE001 - not a plain element-wise function: leave it to CPUGeneric
            return None
        lanes = _vector_lanes(target)
        inner = _extent(sch, loops[-1])
        if inner is None or inner % lanes:
            return None
        outer, vec = sch.split(loops[-1], [None, lanes])
        sch.vectorize(vec)
        fused = sch.fuse(*loops[:-1], outer) if len(loops) > 1 else outer
        total = _extent(sch, fused)
        if total is None or total * lanes >= self.PARALLEL_MIN:
            sch.parallel(fused)
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
