"""The non-model parts of MLC-LLM's library interface.

* ``_metadata``: a Relax function returning the JSON the runtime reads (model type, quantization,
  limits, params in ``params`` order, KV-cache shape, ``memory_usage`` per function).
* ``alloc_embedding_tensor``: ``() -> dtype[prefill_chunk_size, hidden]``.
* ``softmax_with_temperature``: ``(f32[b, 1, v], f32[b]) -> f32[b, 1, v]``.
* ``apply_logit_bias_inplace``, ``apply_penalty_inplace``, ``apply_bitmask_inplace``: TIR PrimFuncs
  updating ``logits f32[b, v]`` in place, written from the semantics the runtime expects (serial
  loops on the CPU; one GPU thread per token or per logit on GPU targets).
"""
from __future__ import annotations

import json

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprVisitor, visitor
from tvm.script import tirx as T

SOFTMAX_MIN_TEMPERATURE = 1e-5


# --- logit processors ------------------------------------------------------------------------
@T.prim_func
def apply_logit_bias_inplace(var_logits: T.handle, var_pos2seq_id: T.handle, var_token_ids: T.handle,
                             var_logit_bias: T.handle):
    T.func_attr({"global_symbol": "apply_logit_bias_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
    batch_size = T.int32()
    vocab_size = T.int32()
    num_token = T.int32()
    logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
    pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
    token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
    logit_bias = T.match_buffer(var_logit_bias, (num_token,), "float32")
    for i in range(num_token):
        logits[pos2seq_id[i], token_ids[i]] = logits[pos2seq_id[i], token_ids[i]] + logit_bias[i]


@T.prim_func
def apply_penalty_inplace(var_logits: T.handle, var_seq_ids: T.handle, var_pos2seq_id: T.handle,
                          var_token_ids: T.handle, var_token_cnt: T.handle, var_penalties: T.handle):
    """presence, frequency and repetition penalty of the tokens seen so far (``penalties[s] = (p, f, r)``)."""
    T.func_attr({"global_symbol": "apply_penalty_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
    batch_size = T.int32()
    vocab_size = T.int32()
    num_token = T.int32()
    num_seq = T.int32()
    logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
    seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
    pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
    token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
    token_cnt = T.match_buffer(var_token_cnt, (num_token,), "int32")
    penalties = T.match_buffer(var_penalties, (num_seq, 3), "float32")
    for i in range(num_token):
        row = seq_ids[pos2seq_id[i]]
        tok = token_ids[i]
        p = pos2seq_id[i]
        logits[row, tok] = logits[row, tok] - (penalties[p, 0] + T.Cast("float32", token_cnt[i]) * penalties[p, 1])
        logits[row, tok] = T.if_then_else(logits[row, tok] < T.float32(0), logits[row, tok] * penalties[p, 2],
                                          logits[row, tok] / penalties[p, 2])


@T.prim_func
def apply_bitmask_inplace(var_logits: T.handle, var_seq_ids: T.handle, var_bitmask: T.handle):
    """Tokens whose bit is 0 in ``bitmask[row, v // 32]`` get the lowest float32."""
    T.func_attr({"global_symbol": "apply_bitmask_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
    batch_size = T.int32()
    vocab_size = T.int32()
    num_seq = T.int32()
    logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
    seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
    bitmask = T.match_buffer(var_bitmask, (batch_size, (vocab_size + 31) // 32), "int32")
    for s in range(num_seq):
        for v in range(vocab_size):
            logits[seq_ids[s], v] = T.if_then_else(
                T.bitwise_and(T.shift_right(bitmask[seq_ids[s], v // 32], v % 32), 1) == 1,
                logits[seq_ids[s], v], T.min_value("float32"))


LOGIT_PROCESSORS = {
    "apply_logit_bias_inplace": apply_logit_bias_inplace,
    "apply_penalty_inplace": apply_penalty_inplace,
    "apply_bitmask_inplace": apply_bitmask_inplace,
}


def gpu_logit_processors(nt: int) -> dict[str, tirx.PrimFunc]:
    """The same three functions for GPU targets, ``nt`` threads per block."""

    @T.prim_func(s_tir=True)
    def bias(var_logits: T.handle, var_pos2seq_id: T.handle, var_token_ids: T.handle, var_logit_bias: T.handle):
        T.func_attr({"global_symbol": "apply_logit_bias_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
        batch_size = T.int32()
        vocab_size = T.int32()
        num_token = T.int32()
        logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
        pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
        token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
        logit_bias = T.match_buffer(var_logit_bias, (num_token,), "float32")
        for bx in T.thread_binding(T.ceildiv(num_token, nt), thread="blockIdx.x"):
            for tx in T.thread_binding(nt, thread="threadIdx.x"):
                with T.sblock("bias"):
                    T.reads()
                    T.writes()
                    if bx * nt + tx < num_token:
                        logits[pos2seq_id[bx * nt + tx], token_ids[bx * nt + tx]] = (
                            logits[pos2seq_id[bx * nt + tx], token_ids[bx * nt + tx]] + logit_bias[bx * nt + tx])

    @T.prim_func(s_tir=True)
    def penalty(var_logits: T.handle, var_seq_ids: T.handle, var_pos2seq_id: T.handle, var_token_ids: T.handle,
                var_token_cnt: T.handle, var_penalties: T.handle):
        T.func_attr({"global_symbol": "apply_penalty_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
        batch_size = T.int32()
        vocab_size = T.int32()
        num_token = T.int32()
        num_seq = T.int32()
        logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
        seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
        pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
        token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
        token_cnt = T.match_buffer(var_token_cnt, (num_token,), "int32")
        penalties = T.match_buffer(var_penalties, (num_seq, 3), "float32")
        for bx in T.thread_binding(T.ceildiv(num_token, nt), thread="blockIdx.x"):
            for tx in T.thread_binding(nt, thread="threadIdx.x"):
                with T.sblock("penalty"):
                    T.reads()
                    T.writes()
                    v = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    if bx * nt + tx < num_token:
                        p: T.let[T.int32] = pos2seq_id[bx * nt + tx]
                        row: T.let[T.int32] = seq_ids[p]
                        tok: T.let[T.int32] = token_ids[bx * nt + tx]
                        v[0] = logits[row, tok] - (penalties[p, 0]
                                                   + T.Cast("float32", token_cnt[bx * nt + tx]) * penalties[p, 1])
                        logits[row, tok] = T.if_then_else(v[0] < T.float32(0), v[0] * penalties[p, 2],
                                                          v[0] / penalties[p, 2])

    @T.prim_func(s_tir=True)
    def bitmask(var_logits: T.handle, var_seq_ids: T.handle, var_bitmask: T.handle):
        T.func_attr({"global_symbol": "apply_bitmask_inplace", "tirx.noalias": True, "tirx.is_scheduled": True})
        batch_size = T.int32()
        vocab_size = T.int32()
        num_seq = T.int32()
        logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
        seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
        bitmask = T.match_buffer(var_bitmask, (batch_size, (vocab_size + 31) // 32), "int32")
        for bx in T.thread_binding(T.ceildiv(num_seq * vocab_size, nt), thread="blockIdx.x"):
            for tx in T.thread_binding(nt, thread="threadIdx.x"):
                with T.sblock("bitmask"):
                    T.reads()
                    T.writes()
                    if bx * nt + tx < num_seq * vocab_size:
                        row: T.let[T.int32] = seq_ids[(bx * nt + tx) // vocab_size]
                        v: T.let[T.int32] = (bx * nt + tx) % vocab_size
                        logits[row, v] = T.if_then_else(
                            T.bitwise_and(T.shift_right(bitmask[row, v // 32], v % 32), 1) == 1,
                            logits[row, v], T.min_value("float32"))

    return {"apply_logit_bias_inplace": bias, "apply_penalty_inplace": penalty, "apply_bitmask_inplace": bitmask}


# --- Relax helper functions --------------------------------------------------------------------
def attach_functions(mod: tvm.IRModule, *, hidden_size: int, dtype: str, prefill_chunk_size: int,
                     gpu_threads: int | None = None) -> tvm.IRModule:
    """Add alloc_embedding_tensor, softmax_with_temperature and the logit processors to ``mod``
    (their GPU versions with ``gpu_threads`` threads per block when given)."""
    bb = relax.BlockBuilder(mod)
    with bb.function("alloc_embedding_tensor", params=[]):
        out = bb.emit(relax.op.builtin.alloc_tensor(relax.ShapeExpr([prefill_chunk_size, hidden_size]), dtype, 0))
        bb.emit_func_output(out)

    batch = tirx.Var("batch_size", "int64")
    vocab = tirx.Var("vocab_size", "int64")
    logits = relax.Var("logits", relax.TensorType([batch, 1, vocab], "float32"))
    temperature = relax.Var("temperature", relax.TensorType([batch], "float32"))
    with bb.function("softmax_with_temperature", params=[logits, temperature]):
        with bb.dataflow():
            t = bb.emit(relax.op.maximum(temperature, relax.const(SOFTMAX_MIN_TEMPERATURE, "float32")))
            t = bb.emit(relax.op.reshape(t, relax.ShapeExpr([batch, 1, 1])))
            scaled = bb.emit(relax.op.divide(logits, t))
            probs = bb.emit_output(relax.op.nn.softmax(scaled, axis=-1))
        bb.emit_func_output(probs)
    mod = bb.get()
    processors = gpu_logit_processors(gpu_threads) if gpu_threads else LOGIT_PROCESSORS
    for name, func in processors.items():
        mod[name] = func
    return mod


def attach_variable_bounds(mod: tvm.IRModule, bounds: dict[str, int]) -> tvm.IRModule:
    """Upper bounds of the symbolic dims so that memory planning is static (and measurable)."""
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = func.with_attr("tir_var_upper_bound", bounds).with_attr("tir_non_negative_var", list(bounds))
    return mod


# --- _metadata ---------------------------------------------------------------------------------
@visitor
class _StorageBytes(PyExprVisitor):
    def __init__(self):
        super().__init__()
        self.total = 0

    def visit_call_(self, call: relax.Call):  # noqa: N802 - visitor API
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.memory.alloc_storage":
            size = call.args[0]
            if isinstance(size, relax.ShapeExpr) and all(isinstance(v, tirx.IntImm) for v in size.values):
                n = 1
                for v in size.values:
                    n *= int(v)
                self.total += n
        super().visit_call_(call)


def memory_usage(mod: tvm.IRModule) -> dict[str, int]:
    """Bytes of statically planned storage per Relax function (after StaticPlanBlockMemory)."""
    usage = {}
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and gv.name_hint != "_metadata":
            v = _StorageBytes()
            v.visit_expr(func)
            usage[gv.name_hint] = v.total
    return dict(sorted(usage.items()))


def attach_metadata(metadata: dict):
    """A module pass adding ``_metadata``: ``metadata`` plus ``memory_usage`` measured on the planned
    module, which the pass also stores in ``metadata["memory_usage"]`` for the caller."""

    @tvm.transform.module_pass(opt_level=0, name="AttachMetadataWithMemoryUsage")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        metadata["memory_usage"] = memory_usage(mod)
        bb = relax.BlockBuilder(mod)
        with bb.function("_metadata", params=[]):
            bb.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
        return bb.get()

    return _pass
