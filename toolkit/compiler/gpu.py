"""GPU targets: TVM targets, dlight schedules with TVM 0.27's workarounds, and the build checks.

* ``tvm_target``: a TVM target from the target table (:mod:`mcpm_mobile.target`).
* ``schedule_rules``: dlight's GPU rules. The tensorized matmul paths (Metal simdgroup, CUDA wmma)
  segfault inside ``s_tir.Tensorize`` in TVM 0.27, so matmuls always take dlight's SIMT schedule; a
  matmul whose row count is symbolic (prefill ``seq_len``, ``batch_size``) dispatches at run time
  between LowBatchGEMV kernels (1-8 rows) and the tiled matmul; the model's dequantize-matmul
  kernels are rebuilt without the CPU's row padding first.
* ``NarrowIndices``: int32 index arithmetic in GPU kernels (not on CUDA, as MLC does).
* ``check_thread_bindings``: every device function must be bound to GPU threads; compiling fails
  otherwise (an unbound kernel would run on a single GPU thread, or not at all).
"""
from __future__ import annotations

import contextlib

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from mcpm_mobile.errors import MCPMError

SAMPLER_KINDS = ("metal", "cuda")  # MLC's runtime samples on the GPU for these (CPU for OpenCL)


def tvm_target(spec: dict, cuda_arch: str | None = None) -> Target:
    """A TVM target from a target table entry's JSON dict; ``cuda_arch`` overrides a CUDA target's arch."""
    spec = dict(spec)
    if cuda_arch and spec.get("kind") != "cuda":
        raise MCPMError("--cuda-arch applies to --target cuda only")
    if cuda_arch:
        if not (cuda_arch.startswith("sm_") and cuda_arch[3:].rstrip("a").isdigit()):
            raise MCPMError(f"--cuda-arch must look like sm_90 or sm_80 (got '{cuda_arch}')")
        spec["arch"] = cuda_arch
    return Target(spec)


def is_gpu(target: Target) -> bool:
    return "gpu" in target.keys


def max_threads(target: Target) -> int:
    return int(target.attrs.get("max_num_threads", 256))


# --- schedules ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_tensorize():
    """Make dlight's Matmul skip its tensorized variants (they segfault in TVM 0.27)."""
    import tvm.s_tir.dlight.gpu.matmul as mm

    saved = mm.MetalMatmul.apply, mm.MatmulTensorization.apply, mm.MatmulInt8Tensorization.apply

    def _skip(*_args):
        return None

    def _raise(*_args):  # Matmul catches exceptions of the Metal path and falls back to SIMT
        raise RuntimeError("simdgroup matmul disabled")

    mm.MetalMatmul.apply, mm.MatmulTensorization.apply, mm.MatmulInt8Tensorization.apply = _raise, _skip, _skip
    try:
        yield
    finally:
        mm.MetalMatmul.apply, mm.MatmulTensorization.apply, mm.MatmulInt8Tensorization.apply = saved


class SIMTMatmul(ScheduleRule):
    """dlight's Matmul, always with the SIMT (non-tensorized) schedule."""

    def apply(self, func, target, tunable):
        with _no_tensorize():
            return dl.gpu.Matmul().apply(func, target, tunable)


def _symbolic_vars(func: tirx.PrimFunc) -> set:
    from tvm.tirx.buffer import is_buffer_var

    return {d for p in func.params if is_buffer_var(p) for d in p.shape if isinstance(d, tirx.Var)}


class LowBatchDispatch(ScheduleRule):
    """A matmul with one symbolic row count ``n``: ``n <= 2`` and ``n <= 8`` take LowBatchGEMV
    kernels (buckets 2 and 4, the GEMV-like decode and short prefill), larger ``n`` the tiled
    matmul; the branch is chosen on the host from ``n``."""

    BRANCHES = ((2, 2), (8, 4))  # (largest n, LowBatchGEMV bucket)

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sym = _symbolic_vars(func)
        if len(sym) != 1:
            return None
        n = sym.pop()
        gemm = SIMTMatmul().apply(func, target, tunable)
        if gemm is None:
            return None
        body = gemm.mod["main"].body
        for limit, bucket in reversed(self.BRANCHES):
            low = dl.gpu.LowBatchGEMV(bucket).apply(func, target, tunable)
            if low is None:
                return None
            body = tirx.IfThenElse(tvm.tirx.op.tvm_thread_invariant(n <= limit), low.mod["main"].body, body)
        body = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body))
        new = func.with_body(body).with_attr("tirx.HoistIfThenElseExprWithBlock", 1)
        return s_tir.Schedule(new)


def _gpu_dequantize_matmul(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The model's ``dequantize_matmul`` kernel in its plain form: ``out[..., n] = cast(sum_k
    f32(x[..., k]) * W[n, k])``, ``W`` a dequantize stage that the schedules inline.

    The CPU form pads the rows to a multiple of 32 (an odd vocabulary) and slices them off in an
    epilogue of another shape, which dlight's GEMV rule cannot schedule (the 2B lm_head would fall
    back to a single thread block); GPUs need no padding.
    """
    from tvm import te
    from tvm.tirx.buffer import is_buffer_var

    from mcpm_mobile.model.quantized_linear import weight_fn

    x, *weights, out = [p for p in func.params if is_buffer_var(p)]
    xt = te.placeholder(x.shape, str(x.dtype), "x")
    wt = [te.placeholder(b.shape, str(b.dtype), f"w{i}") for i, b in enumerate(weights)]
    w = weight_fn(str(func.attrs["mcpm.layout"]), *wt, *([None] * (2 - len(wt))))
    deq = te.compute((out.shape[-1], x.shape[-1]), w, name="dequantize")  # inlined by the schedules
    r = te.reduce_axis((0, x.shape[-1]), name="k")
    acc = te.compute(out.shape, lambda *i: te.sum(xt[(*i[:-1], r)].astype("float32") * deq[i[-1], r], axis=r),
                     name="matmul")
    if str(out.dtype) != "float32":
        acc = te.compute(out.shape, lambda *i: acc(*i).astype(str(out.dtype)), name="cast")
    return te.create_prim_func([xt, *wt, acc]).with_attrs(dict(func.attrs))


class DequantizeMatmul(ScheduleRule):
    """The model's fused dequantize-matmul kernels (``mcpm.kernel`` attribute): rebuilt in plain
    form, then the low-batch dispatch (symbolic rows), GEMV (one row) or the tiled matmul; the
    cross-thread reduction rule for the KN layout where dlight has no outer-reduction GEMV
    (only Android OpenCL and Metal have one)."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            return None
        if "mcpm.kernel" not in func.attrs or func.attrs["mcpm.kernel"] != "dequantize_matmul":
            return None
        plain = _gpu_dequantize_matmul(func)
        for rule in (LowBatchDispatch(), dl.gpu.GEMV(), SIMTMatmul(), dl.gpu.Reduction()):
            sch = rule.apply(plain, target, tunable)
            if sch is not None:
                return sch
        return None


def schedule_rules(target: Target) -> list[ScheduleRule]:
    return [DequantizeMatmul(), LowBatchDispatch(), SIMTMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


# --- passes ------------------------------------------------------------------------------------
def is_host_function(func: tirx.PrimFunc) -> bool:
    if func.attrs is None:
        return False
    if func.attrs.get("tirx.is_host_func"):
        return True
    t = func.attrs.get("target")
    return t is not None and t.kind.name in ("llvm", "c")


@tvm.transform.module_pass(opt_level=0, name="NarrowIndices")
def NarrowIndices(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - pass naming
    """int32 indices in every device function that allows it (as MLC does for non-CUDA GPUs).

    Applied per function: a function whose indices cannot be narrowed keeps int64 instead of
    failing the build.
    """
    narrow = tirx.transform.ForceNarrowIndexToInt32()
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or is_host_function(func):
            continue
        try:
            mod[gv] = narrow(tvm.IRModule({gv: func}))[gv]
        except (RuntimeError, ValueError):
            pass
    return mod


def thread_extents(func: tirx.PrimFunc) -> list[tuple[str, object]]:
    """``(thread tag, extent)`` of every GPU thread binding in ``func`` (scheduled or lowered TIR)."""
    import tvm_ffi

    found = []

    def loop(node):
        if node.kind == tirx.ForKind.THREAD_BINDING:
            found.append((str(node.thread_binding.thread_tag), node.extent))

    def attr(node):
        if node.attr_key == "thread_extent":
            found.append((str(node.node.thread_tag), node.value))

    tvm_ffi.structural_walk(func.body, [(tirx.For, loop), (tirx.AttrStmt, attr)])
    return found


def unbound_functions(mod: tvm.IRModule) -> list[str]:
    """Device PrimFuncs without any GPU thread binding (host shape functions excluded)."""
    return sorted(gv.name_hint for gv, f in mod.functions_items()
                  if isinstance(f, tirx.PrimFunc) and not is_host_function(f) and not thread_extents(f))


def check_thread_bindings(mod: tvm.IRModule) -> None:
    """Fail the compile when a device function was left without GPU thread bindings."""
    missing = unbound_functions(mod)
    if missing:
        raise MCPMError(f"GPU kernels without thread bindings (no schedule applied): {', '.join(missing)}")


# --- attention state merge ---------------------------------------------------------------------
MERGE_STATE = "tir_attention_merge_state"


def merge_state_kernel(num_heads: int, head_dim: int, dtype: str, target: Target) -> tirx.PrimFunc:
    """The KV cache's in-place merge of two attention partial results (``V, S <- merge(V, S,
    V_other, S_other)``, ``S`` a base-2 log-sum-exp), used when a prompt of 2+ tokens meets a
    non-empty cache (a second prefill chunk, a follow-up chat turn).

    TVM 0.27's kernel (``_merge_state_inplace``) has every thread of a head read ``S`` and write the
    merged ``S`` back with no barrier in between, so a thread that runs after another has written
    reads the merged value: correct only where the threads of a head run in lock-step (one GPU
    warp), wrong on CPU OpenCL devices (PoCL, Oclgrind) and undefined by OpenCL. Ours is the same
    computation and launch shape with a barrier between the reads and the one write of ``S``.
    """
    from tvm.script import tirx as T

    vec = min(max(4, head_dim // 32), 4)
    bdx, bdy = head_dim // vec, num_heads
    while bdx * bdy > max_threads(target) and bdy > 1:
        bdy //= 2
    gdy = num_heads // bdy

    @T.prim_func(s_tir=True)
    def merge(v: T.handle, s: T.handle, v_other: T.handle, s_other: T.handle):
        T.func_attr({"tirx.is_scheduled": True})
        n, h, d = T.int32(), T.int32(), T.int32()
        V = T.match_buffer(v, (n, h, d), dtype)
        S = T.match_buffer(s, (n, h), "float32")
        VO = T.match_buffer(v_other, (n, h, d), dtype)
        SO = T.match_buffer(s_other, (n, h), "float32")
        for bx in T.thread_binding(n, thread="blockIdx.x"):
            for by in T.thread_binding(gdy, thread="blockIdx.y"):
                for ty in T.thread_binding(bdy, thread="threadIdx.y"):
                    for tx in T.thread_binding(bdx, thread="threadIdx.x"):
                        with T.sblock("merge"):
                            e = T.sblock_alloc_buffer((3,), "float32", scope="local")  # max, exp2 self, other
                            x = T.sblock_alloc_buffer((vec,), dtype, scope="local")
                            xo = T.sblock_alloc_buffer((vec,), dtype, scope="local")
                            e[0] = T.max(S[bx, by * bdy + ty], SO[bx, by * bdy + ty])
                            e[1] = T.exp2(S[bx, by * bdy + ty] - e[0])
                            e[2] = T.exp2(SO[bx, by * bdy + ty] - e[0])
                            for i in T.vectorized(vec):
                                x[i] = V[bx, by * bdy + ty, tx * vec + i]
                            for i in T.vectorized(vec):
                                xo[i] = VO[bx, by * bdy + ty, tx * vec + i]
                            for i in T.serial(vec):
                                x[i] = x[i] * (e[1] / (e[1] + e[2])) + xo[i] * (e[2] / (e[1] + e[2]))
                            for i in T.vectorized(vec):
                                V[bx, by * bdy + ty, tx * vec + i] = x[i]
                            T.evaluate(T.tvm_storage_sync("shared"))  # every thread has read S
                            if tx == 0:
                                S[bx, by * bdy + ty] = T.log2(e[1] + e[2]) + e[0]

    return merge.with_attr("global_symbol", MERGE_STATE)


def replace_merge_state(mod: tvm.IRModule, num_heads: int, head_dim: int, dtype: str,
                        target: Target) -> tvm.IRModule:
    """Swap TVM's racy merge kernel (see ``merge_state_kernel``) for ours in an exported model."""
    gv = next((g for g in mod.get_global_vars() if g.name_hint == MERGE_STATE), None)
    if gv is None:
        return mod
    mod[gv] = merge_state_kernel(num_heads, head_dim, dtype, target)
    return mod
