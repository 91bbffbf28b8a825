"""Our Relax compile pipeline, built only from TVM's public passes and dlight.

Phases (in the order MLC-LLM's own compile pipeline uses):

0. interface functions and variable bounds are attached before the pipeline (``compile.py``);
1. graph rewrites: ``FuseTransposeMatmul`` (a transpose feeding a matmul never materialises);
2. lowering and fusion: ``LegalizeOps``, ``AnnotateTIROpPattern``, ``FoldConstant``, ``FuseOps``,
   ``FuseTIR``, ``DeadCodeElimination``;
3. target-specific kernel schedules (``schedules.schedule_rules(target)``; GPU targets get
   dlight's gpu rules, see ``gpu.py``);
4. VM lowering with static memory planning, then ``_metadata`` with the measured memory usage; on the
   host, repeated views of planned storage are bound once and decode keeps no kill instructions
   (``ReuseTensorViews``, ``KillAfterLastUse``: 1,366 VM calls a token become ~600).

Host CPU targets add our attention and split + RoPE kernels (``cpu_attention``, ``cpu_rope``) and a
float32 SiLU with a vector exp (``cpu_math``). GPU targets add: TVM's GPU sort before lowering (the
sampler's argsort), int32 index narrowing after scheduling (not on CUDA); ``compile.lower`` then
checks that every kernel is bound to GPU threads.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from mcpm_mobile.compiler import cpu_attention, cpu_math, cpu_rope, gpu, interface, kv_compat, sampler, schedules

ENTRY_FUNCTIONS = ["embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify",
                   "create_tir_paged_kv_cache", "alloc_embedding_tensor", "softmax_with_temperature",
                   *interface.LOGIT_PROCESSORS, *sampler.FUNCTIONS]


@tvm.transform.module_pass(opt_level=0, name="MarkNoAlias")
def MarkNoAlias(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - pass naming
    """Mark every PrimFunc ``tirx.noalias``.

    TVM 0.27's LLVM codegen drops the ``noalias`` buffer information of *all* functions of a
    module as soon as one function lacks the attribute (VMShapeLower's ``shape_func``, the KV-cache
    kernels). The decode GEMVs then run 4x slower. Every function here is called with distinct
    buffers (host shape functions take one), so the attribute holds.
    """
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.noalias")):
            mod[gv] = func.with_attr("tirx.noalias", True)
    return mod


ALLOC_TENSOR_OPS = ("relax.memory.alloc_tensor", "relax.vm.alloc_tensor")
NO_KILL = ("decode", "batch_decode")  # every tensor of a decode step lives in planned storage


@tvm.transform.module_pass(opt_level=0, name="ReuseTensorViews")
def ReuseTensorViews(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - pass naming
    """Bind each (storage, offset, shape, dtype) view of planned memory once per function.

    After static memory planning every layer asks for the same few views of the same few storages;
    each request is a VM instruction (``vm.builtin.alloc_tensor``, 12 per layer and token). A repeated
    view is the same memory with the same shape, so later requests become the first one.
    """
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        seen, changed, blocks = {}, False, []
        for block in func.body.blocks:
            bindings = []
            for b in block.bindings:
                v = b.value
                if (isinstance(b, relax.VarBinding) and isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
                        and v.op.name in ALLOC_TENSOR_OPS and isinstance(v.args[0], relax.Var)):
                    key = (v.op.name, v.args[0].__chandle__(), *(str(a) for a in v.args[1:]))
                    if key in seen:
                        b, changed = relax.VarBinding(b.var, seen[key]), True
                    else:
                        seen[key] = b.var
                bindings.append(b)
            blocks.append(relax.BindingBlock(bindings))
        if changed:
            new = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                                 func.attrs)
            mod[gv] = relax.transform.CanonicalizeBindings()(tvm.IRModule({gv: new}))[gv]
    return mod


@tvm.transform.module_pass(opt_level=0, name="KillAfterLastUse")
def KillAfterLastUse(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - pass naming
    """TVM's ``KillAfterLastUse`` except in the decode functions: there every intermediate is a view of
    planned storage, so a kill frees nothing and only costs an instruction (~540 per token)."""
    killed = relax.transform.KillAfterLastUse()(mod)
    for gv in mod.get_global_vars():
        if gv.name_hint in NO_KILL:
            killed[gv] = mod[gv]
    return killed


def _cpu_rope(metadata: dict) -> tvm.transform.Pass:
    kv, cfg = metadata["kv_cache"], metadata["mcpm"]["model_config"]
    return cpu_rope.ReplaceCPURope(float(cfg["rope_theta"]), kv["num_attention_heads"], kv["num_key_value_heads"],
                                   kv["head_dim"])


def get_pipeline(target: tvm.target.Target, metadata: dict) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="MCPMPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        on_gpu = gpu.is_gpu(target)
        entries = [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint in ENTRY_FUNCTIONS]
        passes = [
            # phase 1: graph rewrites
            kv_compat.FiveEntryKVConfig,  # runtimes before apache/tvm 27c2e019 take 5 entries only
            relax.transform.FuseTransposeMatmul(),
            *([relax.backend.DispatchSortScan()] if on_gpu else []),  # the sampler's argsort
            # phase 2: lowering and fusion
            relax.transform.LegalizeOps(None if on_gpu else cpu_math.LEGALIZE),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(entries),
            # phase 3: target-specific schedules
            *([] if on_gpu else [cpu_attention.ReplaceCPUAttention, _cpu_rope(metadata)]),
            dl.ApplyDefaultSchedule(*schedules.schedule_rules(target)),
            *([gpu.NarrowIndices] if on_gpu and target.kind.name != "cuda" else []),
            # phase 4: VM lowering
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            interface.attach_metadata(metadata),
            relax.transform.LowerAllocTensor(),
            *([relax.transform.KillAfterLastUse()] if on_gpu else [ReuseTensorViews, KillAfterLastUse]),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
            MarkNoAlias,
        ]
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
