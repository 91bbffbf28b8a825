"""The GPU sampler functions MLC-LLM's runtime calls on Metal, CUDA and Vulkan.

Signatures follow what the runtime passes (``cpp/serve/sampler/gpu_sampler.cc``); all
probabilities are float32 ``[batch, vocab]`` rows, all indices int32:

* ``multinomial_from_uniform(probs, uniform[n], sample_indices[n]) -> token[n]``
* ``argsort_probs(probs) -> (sorted_probs, sorted_indices)`` (descending)
* ``sample_with_top_p(sorted_probs, sorted_indices, uniform[n], sample_indices[n], top_p[batch]) -> token[n]``
* ``sampler_take_probs(probs, sorted_indices, sample_indices[n], tokens[n], top_prob_offsets[p])
  -> (sampled_probs[n], top_probs[p], top_indices[p])``
* ``renormalize_by_top_p(probs, top_p[batch], init_pivots[batch, 3]) -> probs``
* ``sampler_verify_draft_tokens(draft_probs[m, vocab], draft_tokens[m], model_probs[m, vocab],
  first_child[m], next_sibling[m], uniform[m], parent_ptr[b]) -> (model_probs, parent_ptr)`` (in place)

The kernels are ours: one thread block per row, partial sums in shared memory. Sampling never
builds a cumulative-sum tensor (so no int64 scan constants, which TVM 0.27 cannot narrow to
int32): each thread sums a contiguous chunk of the row, the one thread whose chunk holds the
target walks it. Only ``argsort`` comes from TVM (``topi``'s GPU sort).
"""
from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.script import tirx as T

FUNCTIONS = ["multinomial_from_uniform", "argsort_probs", "sample_with_top_p", "sampler_take_probs",
             "renormalize_by_top_p", "sampler_verify_draft_tokens"]
NUM_TOP_P_PIVOTS = 3  # the runtime's init_pivots columns (unused: the cutoff is found by bisection)
ONE_PLUS_BITS = 0x3F800001  # float32 bit pattern just above 1.0


@T.macro
def _tree_sum(red, tx, nt):
    """Sum ``red[0:nt]`` (shared memory) into ``red[0]``; every thread of the block takes part."""
    for k in T.unroll(nt.bit_length() - 1):
        if tx < T.shift_right(nt, k + 1):
            red[tx] = red[tx] + red[tx + T.shift_right(nt, k + 1)]
        T.tvm_storage_sync("shared")


@T.macro
def _search(probs, indices, uniform, rows, top_p_arr, out, n, vocab, nt, top_p):
    # One block per sample ``bx``: in row ``r = rows[bx]``, the first ``j`` with
    # ``sum(probs[r, :j+1]) > thr`` (the last non-zero entry when rounding leaves none).
    # Multinomial (``top_p=False``): ``thr = u * sum(row)``. Top-p over sorted rows: first the
    # cut-off ``c = sum(probs[r, :j*+1])``, ``j*`` the first index whose prefix exceeds ``top_p``,
    # then ``thr = u * c``; the result is mapped through ``indices``.
    # Each thread sums a contiguous chunk; the one thread whose chunk holds the target walks it.
    for bx in T.thread_binding(n, thread="blockIdx.x"):
        for tx in T.thread_binding(nt, thread="threadIdx.x"):
            with T.sblock("search"):
                T.reads()
                T.writes()
                part = T.sblock_alloc_buffer((nt,), "float32", scope="shared")
                found_idx = T.sblock_alloc_buffer((1,), "int32", scope="shared")
                found_cum = T.sblock_alloc_buffer((1,), "float32", scope="shared")
                acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                pre = T.sblock_alloc_buffer((1,), "float32", scope="local")
                run = T.sblock_alloc_buffer((1,), "float32", scope="local")
                thr = T.sblock_alloc_buffer((1,), "float32", scope="local")
                later = T.sblock_alloc_buffer((1,), "int32", scope="local")
                hit = T.sblock_alloc_buffer((1,), "int32", scope="local")
                last = T.sblock_alloc_buffer((1,), "int32", scope="local")
                last_cum = T.sblock_alloc_buffer((1,), "float32", scope="local")
                pk = T.sblock_alloc_buffer((1,), "float32", scope="local")
                row: T.let[T.int32] = rows[bx]
                chunk: T.let[T.int32] = T.ceildiv(vocab, nt)
                begin: T.let[T.int32] = tx * chunk
                acc[0] = T.float32(0)
                for j in T.serial(chunk):
                    if begin + j < vocab:
                        acc[0] = acc[0] + probs[row, begin + j]
                part[tx] = acc[0]
                T.tvm_storage_sync("shared")
                for phase in T.serial(2 if top_p else 1):
                    run[0] = T.float32(0)
                    for k in T.serial(nt):
                        run[0] = run[0] + part[k]
                    if top_p:
                        if phase == 0:
                            thr[0] = top_p_arr[row]
                        else:
                            thr[0] = uniform[bx] * found_cum[0]
                    else:
                        thr[0] = uniform[bx] * run[0]
                    T.tvm_storage_sync("shared")
                    if tx == 0:
                        found_idx[0] = vocab - 1
                        found_cum[0] = run[0]
                    # this thread owns the target if its chunk is non-empty, starts at or before
                    # thr, and no later non-empty chunk does
                    run[0] = T.float32(0)
                    later[0] = 0
                    for k in T.serial(nt):
                        pk[0] = part[k]
                        if k == tx:
                            pre[0] = run[0]
                        elif k > tx and pk[0] > T.float32(0) and run[0] <= thr[0]:
                            later[0] = 1
                        run[0] = run[0] + pk[0]
                    T.tvm_storage_sync("shared")
                    if acc[0] > T.float32(0) and pre[0] <= thr[0] and later[0] == 0:
                        run[0] = pre[0]
                        hit[0] = 0
                        last[0] = begin
                        last_cum[0] = pre[0]
                        for j in T.serial(chunk):
                            if begin + j < vocab and hit[0] == 0:
                                run[0] = run[0] + probs[row, begin + j]
                                if probs[row, begin + j] > T.float32(0):
                                    last[0] = begin + j
                                    last_cum[0] = run[0]
                                if run[0] > thr[0]:
                                    hit[0] = 1
                                    found_idx[0] = begin + j
                                    found_cum[0] = run[0]
                        if hit[0] == 0:
                            found_idx[0] = last[0]
                            found_cum[0] = last_cum[0]
                    T.tvm_storage_sync("shared")
                if tx == 0:
                    if top_p:
                        out[bx] = indices[row, found_idx[0]]
                    else:
                        out[bx] = found_idx[0]


def _multinomial_kernel(nt: int):
    @T.prim_func(private=True, s_tir=True)
    def kernel(var_probs: T.handle, var_uniform: T.handle, var_rows: T.handle, var_out: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch = T.int32()
        vocab = T.int32()
        n = T.int32()
        probs = T.match_buffer(var_probs, (batch, vocab), "float32")
        uniform = T.match_buffer(var_uniform, (n,), "float32")
        rows = T.match_buffer(var_rows, (n,), "int32")
        out = T.match_buffer(var_out, (n,), "int32")
        _search(probs, None, uniform, rows, None, out, n, vocab, nt, False)

    return kernel


def _top_p_kernel(nt: int):
    @T.prim_func(private=True, s_tir=True)
    def kernel(var_probs: T.handle, var_indices: T.handle, var_uniform: T.handle, var_rows: T.handle,
               var_top_p: T.handle, var_out: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch = T.int32()
        vocab = T.int32()
        n = T.int32()
        probs = T.match_buffer(var_probs, (batch, vocab), "float32")
        indices = T.match_buffer(var_indices, (batch, vocab), "int32")
        uniform = T.match_buffer(var_uniform, (n,), "float32")
        rows = T.match_buffer(var_rows, (n,), "int32")
        top_p_arr = T.match_buffer(var_top_p, (batch,), "float32")
        out = T.match_buffer(var_out, (n,), "int32")
        _search(probs, indices, uniform, rows, top_p_arr, out, n, vocab, nt, True)

    return kernel


def _renormalize_kernel(nt: int):
    """Keep the smallest set of largest probabilities whose sum reaches ``top_p`` (ties at the
    cut-off included) and rescale it to sum to 1. The cut-off is found by bisection on the float32
    bit pattern (non-negative floats order like their bits): 31 block-wide sums per row."""

    @T.prim_func(private=True, s_tir=True)
    def kernel(var_probs: T.handle, var_top_p: T.handle, var_pivots: T.handle, var_out: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch = T.int32()
        vocab = T.int32()
        probs = T.match_buffer(var_probs, (batch, vocab), "float32")
        top_p = T.match_buffer(var_top_p, (batch,), "float32")
        pivots = T.match_buffer(var_pivots, (batch, NUM_TOP_P_PIVOTS), "float32")  # noqa: F841 - runtime ABI
        out = T.match_buffer(var_out, (batch, vocab), "float32")
        for bx in T.thread_binding(batch, thread="blockIdx.x"):
            for tx in T.thread_binding(nt, thread="threadIdx.x"):
                with T.sblock("renormalize"):
                    T.reads()
                    T.writes()
                    red = T.sblock_alloc_buffer((nt,), "float32", scope="shared")
                    lo = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    hi = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    mid = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    total = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    lo[0] = 0
                    hi[0] = ONE_PLUS_BITS
                    for _it in T.serial(31):
                        mid[0] = lo[0] + T.shift_right(hi[0] - lo[0], 1)
                        acc[0] = T.float32(0)
                        for k in T.serial(T.ceildiv(vocab, nt)):
                            if k * nt + tx < vocab:
                                if T.reinterpret("int32", probs[bx, k * nt + tx]) >= mid[0]:
                                    acc[0] = acc[0] + probs[bx, k * nt + tx]
                        red[tx] = acc[0]
                        T.tvm_storage_sync("shared")
                        _tree_sum(red, tx, nt)
                        total[0] = red[0]
                        T.tvm_storage_sync("shared")
                        if hi[0] - lo[0] > 1:
                            if total[0] >= top_p[bx]:
                                lo[0] = mid[0]
                            else:
                                hi[0] = mid[0]
                    acc[0] = T.float32(0)
                    for k in T.serial(T.ceildiv(vocab, nt)):
                        if k * nt + tx < vocab:
                            if T.reinterpret("int32", probs[bx, k * nt + tx]) >= lo[0]:
                                acc[0] = acc[0] + probs[bx, k * nt + tx]
                    red[tx] = acc[0]
                    T.tvm_storage_sync("shared")
                    _tree_sum(red, tx, nt)
                    total[0] = red[0]
                    for k in T.serial(T.ceildiv(vocab, nt)):
                        if k * nt + tx < vocab:
                            out[bx, k * nt + tx] = T.if_then_else(
                                T.reinterpret("int32", probs[bx, k * nt + tx]) >= lo[0],
                                probs[bx, k * nt + tx] / total[0], T.float32(0))

    return kernel


def _take_probs_kernel(nt: int):
    @T.prim_func(private=True, s_tir=True)
    def kernel(var_probs: T.handle, var_sorted_indices: T.handle, var_rows: T.handle, var_tokens: T.handle,
               var_offsets: T.handle, var_sampled: T.handle, var_top_probs: T.handle, var_top_indices: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch = T.int32()
        vocab = T.int32()
        n = T.int32()
        m = T.int32()
        probs = T.match_buffer(var_probs, (batch, vocab), "float32")
        sorted_indices = T.match_buffer(var_sorted_indices, (batch, vocab), "int32")
        rows = T.match_buffer(var_rows, (n,), "int32")
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        offsets = T.match_buffer(var_offsets, (m,), "int32")
        sampled = T.match_buffer(var_sampled, (n,), "float32")
        top_probs = T.match_buffer(var_top_probs, (m,), "float32")
        top_indices = T.match_buffer(var_top_indices, (m,), "int32")
        for bx in T.thread_binding(T.ceildiv(m + n, nt), thread="blockIdx.x"):
            for tx in T.thread_binding(nt, thread="threadIdx.x"):
                with T.sblock("take"):
                    T.reads()
                    T.writes()
                    i: T.let[T.int32] = bx * nt + tx
                    if i < m:
                        top_indices[i] = sorted_indices[offsets[i] // vocab, offsets[i] % vocab]
                        top_probs[i] = probs[offsets[i] // vocab, sorted_indices[offsets[i] // vocab,
                                                                                 offsets[i] % vocab]]
                    elif i < m + n:
                        sampled[i - m] = probs[rows[i - m], tokens[i - m]]

    return kernel


def _verify_kernel(nt: int):
    """Speculative-decoding verification of a token tree, one thread block per sequence.

    From the root ``parent_ptr[b]``, a child draft token ``t`` is accepted when
    ``model[parent, t] >= u * draft[child, t]``; accepted: descend to its first child. Rejected:
    ``model[parent] = normalize(max(model[parent] - draft[child], 0))`` (accepted anyway when that
    residual is ~0) and try the next sibling. ``parent_ptr[b]`` ends at the last accepted node.
    Element ``k`` of a row is only ever read and written by thread ``k % nt`` (other threads see it
    through shared memory), so no device-memory fence is needed between threads.
    """
    @T.prim_func(private=True, s_tir=True)
    def kernel(var_draft_probs: T.handle, var_draft_tokens: T.handle, var_model_probs: T.handle,
               var_first_child: T.handle, var_next_sibling: T.handle, var_uniform: T.handle,
               var_parent_ptr: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        num_nodes = T.int32()
        vocab = T.int32()
        nbatch = T.int32()
        draft_probs = T.match_buffer(var_draft_probs, (num_nodes, vocab), "float32")
        draft_tokens = T.match_buffer(var_draft_tokens, (num_nodes,), "int32")
        model_probs = T.match_buffer(var_model_probs, (num_nodes, vocab), "float32")
        first_child = T.match_buffer(var_first_child, (num_nodes,), "int32")
        next_sibling = T.match_buffer(var_next_sibling, (num_nodes,), "int32")
        uniform = T.match_buffer(var_uniform, (num_nodes,), "float32")
        parent_ptr = T.match_buffer(var_parent_ptr, (nbatch,), "int32")
        for bx in T.thread_binding(nbatch, thread="blockIdx.x"):
            for tx in T.thread_binding(nt, thread="threadIdx.x"):
                with T.sblock("verify"):
                    T.reads()
                    T.writes()
                    red = T.sblock_alloc_buffer((nt,), "float32", scope="shared")
                    p_shared = T.sblock_alloc_buffer((1,), "float32", scope="shared")
                    p_local = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    parent = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    child = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    acc = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    residual = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    parent[0] = parent_ptr[bx]
                    child[0] = first_child[parent[0]]
                    while child[0] != -1:
                        if tx == draft_tokens[child[0]] % nt:
                            p_shared[0] = model_probs[parent[0], draft_tokens[child[0]]]
                        T.tvm_storage_sync("shared")
                        p_local[0] = p_shared[0]
                        if p_local[0] >= uniform[child[0]] * draft_probs[child[0], draft_tokens[child[0]]]:
                            parent[0] = child[0]
                            child[0] = first_child[child[0]]
                        else:
                            acc[0] = T.float32(0)
                            for k in T.serial(T.ceildiv(vocab, nt)):
                                if k * nt + tx < vocab:
                                    acc[0] = acc[0] + T.max(model_probs[parent[0], k * nt + tx]
                                                            - draft_probs[child[0], k * nt + tx], T.float32(0))
                            red[tx] = acc[0]
                            T.tvm_storage_sync("shared")
                            _tree_sum(red, tx, nt)
                            residual[0] = red[0]
                            if residual[0] < T.float32(1e-7):
                                parent[0] = child[0]
                                child[0] = first_child[child[0]]
                            else:
                                for k in T.serial(T.ceildiv(vocab, nt)):
                                    if k * nt + tx < vocab:
                                        model_probs[parent[0], k * nt + tx] = T.max(
                                            model_probs[parent[0], k * nt + tx] - draft_probs[child[0], k * nt + tx],
                                            T.float32(0)) / residual[0]
                                child[0] = next_sibling[child[0]]
                        T.tvm_storage_sync("shared")
                    if tx == 0:
                        parent_ptr[bx] = parent[0]

    return kernel


# --- Relax functions ----------------------------------------------------------------------------
def _var(name: str, shape, dtype: str) -> relax.Var:
    return relax.Var(name, relax.TensorType(shape, dtype))


def attach_sampler(mod: tvm.IRModule, *, max_batch_size: int, threads: int) -> tvm.IRModule:
    """Add the six sampler functions to ``mod`` (``threads``: a power of two, per thread block)."""
    nt = 1 << (max(32, min(threads, 256)).bit_length() - 1)
    bb = relax.BlockBuilder(mod)
    b, v, n, m = (tirx.Var(s, "int64") for s in ("batch_size", "vocab_size", "num_samples", "num_positions"))
    f32, i32 = "float32", "int32"

    probs = _var("probs", [b, v], f32)
    uniform, rows = _var("uniform_samples", [n], f32), _var("sample_indices", [n], i32)
    with bb.function("multinomial_from_uniform", [probs, uniform, rows]):
        with bb.dataflow():
            gv = bb.add_func(_multinomial_kernel(nt), "sampler_multinomial")
            out = bb.emit_output(relax.call_tir(gv, [probs, uniform, rows], relax.TensorType([n], i32)))
        bb.emit_func_output(out)

    probs = _var("probs", [b, v], f32)
    with bb.function("argsort_probs", [probs]):
        with bb.dataflow():
            order = bb.emit(relax.op.argsort(probs, axis=-1, descending=True, dtype=i32))
            sorted_probs = bb.emit_te(
                lambda p, o: te.compute((b, v), lambda i, j: p[i, o[i, j]], name="take_sorted_probs"),
                probs, order, primfunc_name_hint="take_sorted_probs")
            out = bb.emit_output(relax.Tuple([sorted_probs, order]))
        bb.emit_func_output(out)

    sp, si = _var("sorted_probs", [b, v], f32), _var("sorted_indices", [b, v], i32)
    uniform, rows, top_p = _var("uniform_samples", [n], f32), _var("sample_indices", [n], i32), _var("top_p", [b], f32)
    with bb.function("sample_with_top_p", [sp, si, uniform, rows, top_p]):
        with bb.dataflow():
            gv = bb.add_func(_top_p_kernel(nt), "sampler_top_p")
            out = bb.emit_output(relax.call_tir(gv, [sp, si, uniform, rows, top_p], relax.TensorType([n], i32)))
        bb.emit_func_output(out)

    probs, si = _var("unsorted_probs", [b, v], f32), _var("sorted_indices", [b, v], i32)
    rows, tokens, offsets = _var("sample_indices", [n], i32), _var("sampling_result", [n], i32), _var(
        "top_prob_offsets", [m], i32)
    with bb.function("sampler_take_probs", [probs, si, rows, tokens, offsets]):
        with bb.dataflow():
            gv = bb.add_func(_take_probs_kernel(nt), "sampler_take_probs_gather")
            out = bb.emit_output(relax.call_tir(gv, [probs, si, rows, tokens, offsets], [
                relax.TensorType([n], f32), relax.TensorType([m], f32), relax.TensorType([m], i32)]))
        bb.emit_func_output(out)

    probs, top_p, pivots = _var("probs", [b, v], f32), _var("top_p", [b], f32), _var(
        "init_pivots", [b, NUM_TOP_P_PIVOTS], f32)
    with bb.function("renormalize_by_top_p", [probs, top_p, pivots]):
        with bb.dataflow():
            gv = bb.add_func(_renormalize_kernel(nt), "sampler_renormalize_top_p")
            out = bb.emit_output(relax.call_tir(gv, [probs, top_p, pivots], relax.TensorType([b, v], f32)))
        bb.emit_func_output(out)

    nodes, nbatch = tirx.Var("num_nodes", "int64"), tirx.Var("nbatch", "int64")
    args = [_var("draft_probs", [nodes, v], f32), _var("draft_tokens", [nodes], i32),
            _var("model_probs", [nodes, v], f32), _var("token_tree_first_child", [nodes], i32),
            _var("token_tree_next_sibling", [nodes], i32), _var("uniform_samples", [nodes], f32),
            _var("token_tree_parent_ptr", [nbatch], i32)]
    with bb.function("sampler_verify_draft_tokens", args):
        with bb.dataflow():
            gv = bb.add_func(_verify_kernel(nt), "sampler_verify_tree")
            out = bb.emit_output(relax.call_tir_inplace(gv, args, [2, 6], [args[2].ty, args[6].ty]))
        bb.emit_func_output(out)

    mod = bb.get()
    # upper bounds for static memory planning, as MLC sets them (top-5 logprobs + the sample per row)
    bounds = {"batch_size": max_batch_size, "num_samples": max_batch_size, "num_positions": 6 * max_batch_size}
    for name in FUNCTIONS:
        mod[name] = mod[name].with_attr("tir_var_upper_bound", bounds).with_attr("tir_non_negative_var",
                                                                                ["vocab_size"])
    return mod
