"""Parallel, vectorised CPU attention kernels for TVM's paged KV cache (host targets only).

TVM 0.27's CPU kernels are reference kernels: one thread, scalar loops, an online-softmax rescale
after every single KV row. ``ReplaceCPUAttention`` swaps in, by name and with the same signatures and
semantics (before scheduling):

* ``batch_decode_paged_kv_cpu``: ``decode_attention_tiled`` for grouped-query attention (one pass over
  the cached K/V per KV head for its whole group), ``decode_attention_cpu`` otherwise ((sequence,
  query head) pairs over threads, one rescale per page-sized chunk, 16-lane FMAs along ``D``);
* ``batch_prefill_ragged_kv`` (a prefill chunk's attention to itself) and ``batch_prefill_paged_kv_cpu``
  (its attention to the earlier chunks in the cache): the tiled kernels below.

The sliding-window variants are left as TVM wrote them; only head dims that are a multiple of 16 and
query heads that divide into the KV heads are replaced. Q is pre-scaled by ``sm_scale * log2(e)``
once and scores use ``exp2``, as the originals.
"""
from __future__ import annotations

import math

import tvm
from tvm.relax.frontend.nn.llm._kernel_common import (_declare_length_info, _get_kv_chunk_len,
                                                       _get_seq_offset, _rope)
from tvm.script import tirx as T

SYMBOL = "batch_decode_paged_kv_cpu"
LANES = 16


def decode_attention_cpu(num_kv_heads: int, num_qo_heads: int, head_dim: int, qkv_dtype: str,
                         rope_scaling: dict, page_size: int = 16):
    H_qo, H_kv, D, P, L = num_qo_heads, num_kv_heads, head_dim, page_size, LANES
    group = H_qo // H_kv
    NJ = D // L
    log2e = math.log2(math.exp(1))

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        Q = T.match_buffer(Q_handle, (B, H_qo, D), qkv_dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, H_kv, P, D), qkv_dtype)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32",
                                           elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32",
                                           elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32",
                                           elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32",
                                         elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, H_qo, D), qkv_dtype)
        lse = T.match_buffer(lse_handle, (B, H_qo), "float32")
        length_info = _declare_length_info(var_length_info, B, False, length_info_elem_offset)

        for bh in T.parallel(B * H_qo):
            with T.sblock("attn"):
                vbh = T.axis.spatial(B * H_qo, bh)
                T.reads()
                T.writes()
                Q_local = T.sblock_alloc_buffer((D,), "float32")
                O_local = T.sblock_alloc_buffer((D,), "float32")
                S_local = T.sblock_alloc_buffer((P,), "float32")
                acc = T.sblock_alloc_buffer((L,), "float32")
                st = T.sblock_alloc_buffer((4,), "float32")  # running max, running sum, chunk max, alpha
                b: T.let[T.int32] = vbh // H_qo
                h: T.let[T.int32] = vbh % H_qo
                begin: T.let[T.int32] = page_table_indptr[b]
                end: T.let[T.int32] = page_table_indptr[b + 1]
                kv_len: T.let[T.int32] = T.if_then_else(
                    begin != end, _get_kv_chunk_len(end - begin, P, b, length_info, False), 0)
                for d in T.serial(D):
                    Q_local[d] = T.if_then_else(
                        rotary_mode == 1,
                        _rope(Q, q_rope_position[b], D, rope_theta, rope_scale, (b, h, d), qkv_dtype, rope_scaling),
                        T.Cast("float32", Q[b, h, d]),
                    ) * (sm_scale * log2e)
                for d in T.vectorized(D):
                    O_local[d] = T.float32(0)
                st[0] = T.float32(-5e4)
                st[1] = T.float32(0)
                for chunk in T.serial((kv_len + P - 1) // P):
                    rows: T.let[T.int32] = T.min(P, kv_len - chunk * P)
                    st[2] = T.float32(-5e4)
                    for r in T.serial(rows):
                        off: T.let[T.int32] = _get_seq_offset(chunk * P + r, b, length_info, False)
                        page_no: T.let[T.int32] = page_table_values[begin + off // P]
                        for l in T.vectorized(L):
                            acc[l] = T.float32(0)
                        for j in T.serial(NJ):
                            for l in T.vectorized(L):
                                acc[l] = acc[l] + Q_local[j * L + l] * T.if_then_else(
                                    rotary_mode == 1,
                                    _rope(pages, k_rope_pos_offset[b] + chunk * P + r, D, rope_theta, rope_scale,
                                          (page_no, 0, h // group, off % P, j * L + l), qkv_dtype, rope_scaling),
                                    T.Cast("float32", pages[page_no, 0, h // group, off % P, j * L + l]))
                        S_local[r] = T.float32(0)
                        for l in T.serial(L):
                            S_local[r] = S_local[r] + acc[l]
                        st[2] = T.max(st[2], S_local[r])
                    # rescale the running output once per chunk
                    st[2] = T.max(st[0], st[2])
                    st[3] = T.exp2(st[0] - st[2])
                    st[1] = st[1] * st[3]
                    for d in T.vectorized(D):
                        O_local[d] = O_local[d] * st[3]
                    st[0] = st[2]
                    for r in T.serial(rows):
                        off2: T.let[T.int32] = _get_seq_offset(chunk * P + r, b, length_info, False)
                        page2: T.let[T.int32] = page_table_values[begin + off2 // P]
                        S_local[r] = T.exp2(S_local[r] - st[0])
                        st[1] = st[1] + S_local[r]
                        for d in T.vectorized(D):
                            O_local[d] = O_local[d] + S_local[r] * T.Cast(
                                "float32", pages[page2, 1, h // group, off2 % P, d])
                for d in T.serial(D):
                    output[b, h, d] = T.Cast(qkv_dtype, O_local[d] / T.max(st[1], T.float32(1e-30)))
                lse[b, h] = st[0] + T.log2(T.max(st[1], T.float32(1e-30)))

    return batch_decode_paged_kv


RAGGED_SYMBOL = "batch_prefill_ragged_kv"


# --- tiled prefill attention (ragged self-attention and paged cross-attention) ------------------------------------
#
# One work item is (sequence, KV head, block of TB query tokens): its R = TB * group query rows (all the query
# heads that share the KV head) meet each 16-key chunk once. The chunk's K and V are converted to float32 once
# (Ks, Vs [16, D]; RoPE applied to Ks in inline-rotary mode); then per row the 16 scores are one vector
# (``_scores``), the online softmax is updated once per chunk with a vector exp2, and P.V is 16 x D/16 FMAs. Keys past a row's causal limit get a score of -5e4 (exp2 -> 0).

GQA_ROWS = 4  # decode: query heads per KV head from which the grouped kernel wins
TB_ROWS = 64  # query rows per work item: TB = max(1, TB_ROWS // group) tokens


def _exp2(x, lanes):
    """exp2 of a float32 vector of non-positive values: 2^round(x) by exponent bits times a degree-6 polynomial
    of the remainder in [-0.5, 0.5] (relative error ~1e-7); below -126 it returns 2^-126 (~1e-38)."""
    x = T.max(x, T.Broadcast(T.float32(-126), lanes))
    n = T.floor(x + T.Broadcast(T.float32(0.5), lanes))
    f = x - n
    p = T.Broadcast(T.float32(1.540353039e-4), lanes)
    for c in (1.333355815e-3, 9.618129108e-3, 5.550410866e-2, 2.402265070e-1, 6.931471806e-1, 1.0):
        p = p * f + T.Broadcast(T.float32(c), lanes)
    bits = T.shift_left(T.Cast(f"int32x{lanes}", n) + T.Broadcast(T.int32(127), lanes),
                        T.Broadcast(T.int32(23), lanes))
    return p * T.reinterpret(f"float32x{lanes}", bits)


def _exp2_scalar(x):
    """``_exp2`` of one float32: inline, so the per-row softmax rescale is no libm call (which spilled every
    vector register and serialised the rows)."""
    x = T.max(x, T.float32(-126))
    n = T.floor(x + T.float32(0.5))
    f = x - n
    p = T.float32(1.540353039e-4)
    for c in (1.333355815e-3, 9.618129108e-3, 5.550410866e-2, 2.402265070e-1, 6.931471806e-1, 1.0):
        p = p * f + T.float32(c)
    return p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + T.int32(127), T.int32(23)))


def _reduce(v, lanes, op):
    width = lanes
    while width > 1:
        width //= 2
        v = op(tvm.tirx.Shuffle([v], list(range(width))), tvm.tirx.Shuffle([v], list(range(width, 2 * width))))
    return v


def _scores(Qs, Ks, r, D: int):
    """The 16 scores of query row ``r`` against the chunk's keys (Ks row-major [16, D], float32) as one vector.

    Each key's D/16 products are summed lane-wise (one vector per key); then a butterfly folds the 16 vectors
    into one: at each level two vectors' halves are interleaved and added (15 folds of 2 shuffles + 1 add,
    instead of 16 horizontal sums), and a final shuffle puts key j in lane j.
    """
    L = LANES
    vecs = []
    for j in range(L):
        acc = None
        for blk in range(D // L):
            term = Qs[T.ramp(r * D + blk * L, 1, L)] * Ks[T.ramp(j * D + blk * L, 1, L)]
            acc = term if acc is None else acc + term
        vecs.append((acc, [j] * L))
    bs = L // 2
    while len(vecs) > 1:
        nxt = []
        for (a, ka), (b, kb) in zip(vecs[0::2], vecs[1::2]):
            lo, hi, keys = [], [], []
            for src, base, labels in ((0, 0, ka), (L, L, kb)):
                for blk in range(L // (2 * bs)):
                    for i in range(bs):
                        lo.append(base + blk * 2 * bs + i)
                        hi.append(base + blk * 2 * bs + bs + i)
                        assert labels[blk * 2 * bs + i] == labels[blk * 2 * bs + bs + i]
                        keys.append(labels[blk * 2 * bs + i])
            nxt.append((tvm.tirx.Shuffle([a, b], lo) + tvm.tirx.Shuffle([a, b], hi), keys))
        vecs, bs = nxt, bs // 2
    v, keys = vecs[0]
    return tvm.tirx.Shuffle([v], [keys.index(j) for j in range(L)])


def _chunk_update(D: int):
    """Macro: fold one 16-key chunk (Ks, Vs filled row-major; keys >= ``lim`` masked) into row ``r``'s state."""
    L = LANES

    @T.macro(hygienic=False)
    def update(Qs, Os, Ks, Vs, ms, ls, sv, r, c0, lim):
        sv[T.ramp(0, 1, L)] = T.Select(T.ramp(c0, 1, L) < T.Broadcast(lim, L), _scores(Qs, Ks, r, D),
                                       T.Broadcast(T.float32(-5e4), L))
        sv[L] = T.max(ms[r], _reduce(sv[T.ramp(0, 1, L)], L, T.max))
        sv[L + 1] = _exp2_scalar(ms[r] - sv[L])
        ms[r] = sv[L]
        sv[T.ramp(0, 1, L)] = _exp2(sv[T.ramp(0, 1, L)] - T.Broadcast(sv[L], L), L)
        ls[r] = ls[r] * sv[L + 1] + _reduce(sv[T.ramp(0, 1, L)], L, lambda a, b: a + b)
        for j in range(D // L):
            Os[T.ramp(r * D + j * L, 1, L)] = Os[T.ramp(r * D + j * L, 1, L)] * T.Broadcast(sv[L + 1], L)
        for t in range(L):
            for j in range(D // L):
                Os[T.ramp(r * D + j * L, 1, L)] = (Os[T.ramp(r * D + j * L, 1, L)]
                                                  + T.Broadcast(sv[t], L) * Vs[T.ramp(t * D + j * L, 1, L)])

    return update


def prefill_ragged_tiled(num_kv_heads: int, num_qo_heads: int, head_dim: int, qkv_dtype: str, rope_scaling: dict):
    """Drop-in for TVM's ``batch_prefill_ragged_kv`` CPU kernel: attention of a prefill chunk to itself."""
    H_qo, H_kv, D, L = num_qo_heads, num_kv_heads, head_dim, LANES
    group = H_qo // H_kv
    TB = max(1, TB_ROWS // group)
    R = TB * group
    scale = math.log2(math.exp(1))
    update = _chunk_update(D)

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(var_q: T.handle, var_q_indptr: T.handle, var_k: T.handle, var_v: T.handle,
                                var_kv_indptr: T.handle, var_q_rope_position: T.handle,
                                var_k_rope_pos_offset: T.handle, var_output: T.handle, var_lse: T.handle,
                                causal: T.int32, rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32,
                                sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size, qo_len, kv_len = T.int32(), T.int32(), T.int32()
        q_indptr_elem_offset, kv_indptr_elem_offset = T.int32(), T.int32()
        q_rope_position_elem_offset, k_rope_pos_offset_elem_offset = T.int32(), T.int32()
        q = T.match_buffer(var_q, (qo_len, H_qo, D), qkv_dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        k = T.match_buffer(var_k, (kv_len, H_kv, D), qkv_dtype)
        v = T.match_buffer(var_v, (kv_len, H_kv, D), qkv_dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32",
                                         elem_offset=q_rope_position_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32",
                                           elem_offset=k_rope_pos_offset_elem_offset)
        output = T.match_buffer(var_output, (qo_len, H_qo, D), qkv_dtype)
        lse = T.match_buffer(var_lse, (qo_len, H_qo), "float32")

        for b in T.serial(batch_size):
            for item in T.parallel(H_kv * T.ceildiv(q_indptr[b + 1] - q_indptr[b], TB)):
                with T.sblock("attn"):
                    vb, vi = T.axis.remap("SS", [b, item])
                    T.reads()
                    T.writes()
                    Qs = T.sblock_alloc_buffer((R * D,), "float32")
                    Os = T.sblock_alloc_buffer((R * D,), "float32")
                    Ks = T.sblock_alloc_buffer((L * D,), "float32")
                    Vs = T.sblock_alloc_buffer((L * D,), "float32")
                    ms = T.sblock_alloc_buffer((R,), "float32")
                    ls = T.sblock_alloc_buffer((R,), "float32")
                    sv = T.sblock_alloc_buffer((L + 2,), "float32")
                    hk: T.let[T.int32] = vi % H_kv
                    t0: T.let[T.int32] = vi // H_kv * TB
                    q0: T.let[T.int32] = q_indptr[vb]
                    n_q: T.let[T.int32] = q_indptr[vb + 1] - q_indptr[vb]
                    k0: T.let[T.int32] = kv_indptr[vb]
                    n_kv: T.let[T.int32] = kv_indptr[vb + 1] - kv_indptr[vb]
                    t_end: T.let[T.int32] = T.min(t0 + TB, n_q)
                    n_vis: T.let[T.int32] = T.if_then_else(causal > 0, T.min(n_kv - n_q + t_end, n_kv), n_kv)
                    for r in T.serial(R):
                        for d in T.serial(D):
                            Qs[r * D + d] = T.if_then_else(
                                t0 + r // group < n_q,
                                T.if_then_else(
                                    rotary_mode == 1,
                                    _rope(q, q_rope_position[q0 + t0 + r // group], D, rope_theta, rope_scale,
                                          (q0 + t0 + r // group, hk * group + r % group, d), qkv_dtype, rope_scaling),
                                    T.Cast("float32", q[q0 + t0 + r // group, hk * group + r % group, d])),
                                T.float32(0)) * (sm_scale * scale)
                        for d in T.vectorized(D):
                            Os[r * D + d] = T.float32(0)
                        ms[r] = T.float32(-5e4)
                        ls[r] = T.float32(0)
                    for c in T.serial(T.ceildiv(n_vis, L)):
                        for j in T.serial(L):
                            if c * L + j < n_kv:
                                if rotary_mode == 1:
                                    for d in T.serial(D):
                                        Ks[j * D + d] = _rope(k, k_rope_pos_offset[vb] + c * L + j, D, rope_theta,
                                                              rope_scale, (k0 + c * L + j, hk, d), qkv_dtype,
                                                              rope_scaling)
                                else:
                                    for d in T.vectorized(D):
                                        Ks[j * D + d] = T.Cast("float32", k[k0 + c * L + j, hk, d])
                                for d in T.vectorized(D):
                                    Vs[j * D + d] = T.Cast("float32", v[k0 + c * L + j, hk, d])
                            else:
                                for d in T.vectorized(D):
                                    Ks[j * D + d] = T.float32(0)
                                for d in T.vectorized(D):
                                    Vs[j * D + d] = T.float32(0)
                        for r in T.serial(R):
                            if t0 + r // group < n_q:
                                if c * L < T.if_then_else(causal > 0, T.min(n_kv - n_q + t0 + r // group + 1, n_kv), n_kv):
                                    update(Qs, Os, Ks, Vs, ms, ls, sv, r, c * L,
                                           T.if_then_else(causal > 0, T.min(n_kv - n_q + t0 + r // group + 1, n_kv), n_kv))
                    for r in T.serial(R):
                        if t0 + r // group < n_q:
                            for d in T.serial(D):
                                output[q0 + t0 + r // group, hk * group + r % group, d] = T.Cast(
                                    qkv_dtype, Os[r * D + d] / T.max(ls[r], T.float32(1e-30)))
                            lse[q0 + t0 + r // group, hk * group + r % group] = ms[r] + T.log2(T.max(ls[r], T.float32(1e-30)))

    return batch_prefill_ragged_kv


PAGED_SYMBOL = "batch_prefill_paged_kv_cpu"


def prefill_paged_tiled(num_kv_heads: int, num_qo_heads: int, head_dim: int, qkv_dtype: str, rope_scaling: dict,
                        page_size: int = 16):
    """Drop-in for TVM's ``batch_prefill_paged_kv_cpu`` (a prefill chunk's attention to the KV cache pages).

    TVM's version is scalar, single-threaded, visits ``max_num_pages * page_size`` rows for every query row
    and head (the whole cache's capacity, not the sequence's length) and rescales its output with
    ``scale_O[d_idx]``, a one-element buffer read out of bounds for d > 0.
    """
    H_qo, H_kv, D, L, P = num_qo_heads, num_kv_heads, head_dim, LANES, page_size
    group = H_qo // H_kv
    TB = max(1, TB_ROWS // group)
    R = TB * group
    scale = math.log2(math.exp(1))
    update = _chunk_update(D)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(var_q: T.handle, var_q_indptr: T.handle, var_pages: T.handle,
                                   var_page_indptr: T.handle, var_page_values: T.handle, var_length_info: T.handle,
                                   var_k_rope_pos_offset: T.handle, var_q_rope_position: T.handle,
                                   var_output: T.handle, var_lse: T.handle, causal: T.int32, rotary_mode: T.int32,
                                   rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size, total_len, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32(), T.int32()
        q_indptr_elem_offset, page_indptr_elem_offset, page_values_elem_offset = T.int32(), T.int32(), T.int32()
        k_rope_pos_offset_elem_offset, q_rope_position_elem_offset = T.int32(), T.int32()
        length_info_elem_offset = T.int32()
        q = T.match_buffer(var_q, (total_len, H_qo, D), qkv_dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, H_kv, P, D), qkv_dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32",
                                           elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32",
                                         elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(var_output, (total_len, H_qo, D), qkv_dtype)
        lse = T.match_buffer(var_lse, (total_len, H_qo), "float32")
        length_info = _declare_length_info(var_length_info, batch_size, False, length_info_elem_offset)

        for b in T.serial(batch_size):
            for item in T.parallel(H_kv * T.ceildiv(q_indptr[b + 1] - q_indptr[b], TB)):
                with T.sblock("attn"):
                    vb, vi = T.axis.remap("SS", [b, item])
                    T.reads()
                    T.writes()
                    Qs = T.sblock_alloc_buffer((R * D,), "float32")
                    Os = T.sblock_alloc_buffer((R * D,), "float32")
                    Ks = T.sblock_alloc_buffer((L * D,), "float32")
                    Vs = T.sblock_alloc_buffer((L * D,), "float32")
                    ms = T.sblock_alloc_buffer((R,), "float32")
                    ls = T.sblock_alloc_buffer((R,), "float32")
                    sv = T.sblock_alloc_buffer((L + 2,), "float32")
                    hk: T.let[T.int32] = vi % H_kv
                    t0: T.let[T.int32] = vi // H_kv * TB
                    q0: T.let[T.int32] = q_indptr[vb]
                    n_q: T.let[T.int32] = q_indptr[vb + 1] - q_indptr[vb]
                    p0: T.let[T.int32] = page_indptr[vb]
                    n_kv: T.let[T.int32] = T.if_then_else(
                        p0 != page_indptr[vb + 1],
                        _get_kv_chunk_len(page_indptr[vb + 1] - p0, P, vb, length_info, False), 0)
                    t_end: T.let[T.int32] = T.min(t0 + TB, n_q)
                    n_vis: T.let[T.int32] = T.if_then_else(causal > 0, T.min(n_kv - n_q + t_end, n_kv), n_kv)
                    for r in T.serial(R):
                        for d in T.serial(D):
                            Qs[r * D + d] = T.if_then_else(
                                t0 + r // group < n_q,
                                T.if_then_else(
                                    rotary_mode == 1,
                                    _rope(q, q_rope_position[q0 + t0 + r // group], D, rope_theta, rope_scale,
                                          (q0 + t0 + r // group, hk * group + r % group, d), qkv_dtype, rope_scaling),
                                    T.Cast("float32", q[q0 + t0 + r // group, hk * group + r % group, d])),
                                T.float32(0)) * (sm_scale * scale)
                        for d in T.vectorized(D):
                            Os[r * D + d] = T.float32(0)
                        ms[r] = T.float32(-5e4)
                        ls[r] = T.float32(0)
                    for c in T.serial(T.ceildiv(n_vis, L)):
                        for j in T.serial(L):
                            if c * L + j < n_kv:
                                page: T.let[T.int32] = page_values[p0 + _get_seq_offset(c * L + j, vb, length_info,
                                                                                        False) // P]
                                slot: T.let[T.int32] = _get_seq_offset(c * L + j, vb, length_info, False) % P
                                if rotary_mode == 1:
                                    for d in T.serial(D):
                                        Ks[j * D + d] = _rope(pages, k_rope_pos_offset[vb] + c * L + j, D, rope_theta,
                                                              rope_scale, (page, 0, hk, slot, d), qkv_dtype,
                                                              rope_scaling)
                                else:
                                    for d in T.vectorized(D):
                                        Ks[j * D + d] = T.Cast("float32", pages[page, 0, hk, slot, d])
                                for d in T.vectorized(D):
                                    Vs[j * D + d] = T.Cast("float32", pages[page, 1, hk, slot, d])
                            else:
                                for d in T.vectorized(D):
                                    Ks[j * D + d] = T.float32(0)
                                for d in T.vectorized(D):
                                    Vs[j * D + d] = T.float32(0)
                        for r in T.serial(R):
                            if t0 + r // group < n_q:
                                if c * L < T.if_then_else(causal > 0, T.min(n_kv - n_q + t0 + r // group + 1, n_kv), n_kv):
                                    update(Qs, Os, Ks, Vs, ms, ls, sv, r, c * L,
                                           T.if_then_else(causal > 0, T.min(n_kv - n_q + t0 + r // group + 1, n_kv), n_kv))
                    for r in T.serial(R):
                        if t0 + r // group < n_q:
                            for d in T.serial(D):
                                output[q0 + t0 + r // group, hk * group + r % group, d] = T.Cast(
                                    qkv_dtype, Os[r * D + d] / T.max(ls[r], T.float32(1e-30)))
                            lse[q0 + t0 + r // group, hk * group + r % group] = ms[r] + T.log2(T.max(ls[r], T.float32(1e-30)))

    return batch_prefill_paged_kv_cpu



def decode_attention_tiled(num_kv_heads: int, num_qo_heads: int, head_dim: int, qkv_dtype: str, rope_scaling: dict,
                           page_size: int = 16):
    """Drop-in for TVM's ``batch_decode_paged_kv_cpu`` for grouped-query attention (group >= 4).

    One work item per (sequence, KV head): the group's query heads are its rows, so each K/V row of the
    cache is read and converted once for the whole group (``decode_attention_cpu`` reads it once per query
    head); scores, softmax and P.V as in the tiled prefill kernels.
    """
    H_qo, H_kv, D, L, P = num_qo_heads, num_kv_heads, head_dim, LANES, page_size
    R = H_qo // H_kv
    scale = math.log2(math.exp(1))
    update = _chunk_update(D)
    per_line = 512 // tvm.DataType(qkv_dtype).bits  # elements in a 64-byte cache line
    lines = -(-D // per_line)

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(Q_handle: T.handle, pages_handle: T.handle, page_table_indptr_handle: T.handle,
                              page_table_values_handle: T.handle, var_length_info: T.handle,
                              k_rope_pos_offset_handle: T.handle, q_rope_position_handle: T.handle,
                              output_handle: T.handle, lse_handle: T.handle, rotary_mode: T.int32,
                              rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32()
        page_indptr_elem_offset, page_values_elem_offset = T.int32(), T.int32()
        k_rope_pos_offset_elem_offset, q_rope_position_elem_offset = T.int32(), T.int32()
        length_info_elem_offset = T.int32()
        Q = T.match_buffer(Q_handle, (B, H_qo, D), qkv_dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, H_kv, P, D), qkv_dtype)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32",
                                           elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32",
                                           elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32",
                                           elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, H_qo, D), qkv_dtype)
        lse = T.match_buffer(lse_handle, (B, H_qo), "float32")
        length_info = _declare_length_info(var_length_info, B, False, length_info_elem_offset)

        for item in T.parallel(B * H_kv):
            with T.sblock("attn"):
                vi = T.axis.spatial(B * H_kv, item)
                T.reads()
                T.writes()
                Qs = T.sblock_alloc_buffer((R * D,), "float32")
                Os = T.sblock_alloc_buffer((R * D,), "float32")
                Ks = T.sblock_alloc_buffer((L * D,), "float32")
                Vs = T.sblock_alloc_buffer((L * D,), "float32")
                ms = T.sblock_alloc_buffer((R,), "float32")
                ls = T.sblock_alloc_buffer((R,), "float32")
                sv = T.sblock_alloc_buffer((L + 2,), "float32")
                b: T.let[T.int32] = vi // H_kv
                hk: T.let[T.int32] = vi % H_kv
                p0: T.let[T.int32] = page_table_indptr[b]
                n_kv: T.let[T.int32] = T.if_then_else(
                    p0 != page_table_indptr[b + 1],
                    _get_kv_chunk_len(page_table_indptr[b + 1] - p0, P, b, length_info, False), 0)
                for r in T.serial(R):
                    for d in T.serial(D):
                        Qs[r * D + d] = T.if_then_else(
                            rotary_mode == 1,
                            _rope(Q, q_rope_position[b], D, rope_theta, rope_scale, (b, hk * R + r, d), qkv_dtype,
                                  rope_scaling),
                            T.Cast("float32", Q[b, hk * R + r, d])) * (sm_scale * scale)
                    for d in T.vectorized(D):
                        Os[r * D + d] = T.float32(0)
                    ms[r] = T.float32(-5e4)
                    ls[r] = T.float32(0)
                for c in T.serial(T.ceildiv(n_kv, L)):
                    if (c + 1) * L < n_kv:  # the next chunk's page (K and V of this head) while this one computes
                        nxt: T.let[T.int32] = page_table_values[
                            p0 + _get_seq_offset((c + 1) * L, b, length_info, False) // P]
                        for kv in T.serial(2):
                            for s in T.serial(P):
                                for ln in T.serial(lines):
                                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch", T.address_of(
                                        pages[nxt, kv, hk, s, ln * per_line]), T.int32(0), T.int32(3), T.int32(1)))
                    for j in T.serial(L):
                        if c * L + j < n_kv:
                            page: T.let[T.int32] = page_table_values[
                                p0 + _get_seq_offset(c * L + j, b, length_info, False) // P]
                            slot: T.let[T.int32] = _get_seq_offset(c * L + j, b, length_info, False) % P
                            if rotary_mode == 1:
                                for d in T.serial(D):
                                    Ks[j * D + d] = _rope(pages, k_rope_pos_offset[b] + c * L + j, D, rope_theta,
                                                          rope_scale, (page, 0, hk, slot, d), qkv_dtype, rope_scaling)
                            else:
                                for d in T.vectorized(D):
                                    Ks[j * D + d] = T.Cast("float32", pages[page, 0, hk, slot, d])
                            for d in T.vectorized(D):
                                Vs[j * D + d] = T.Cast("float32", pages[page, 1, hk, slot, d])
                        else:
                            for d in T.vectorized(D):
                                Ks[j * D + d] = T.float32(0)
                            for d in T.vectorized(D):
                                Vs[j * D + d] = T.float32(0)
                    for r in T.serial(R):
                        update(Qs, Os, Ks, Vs, ms, ls, sv, r, c * L, n_kv)
                for r in T.serial(R):
                    for d in T.serial(D):
                        output[b, hk * R + r, d] = T.Cast(qkv_dtype, Os[r * D + d] / T.max(ls[r], T.float32(1e-30)))
                    lse[b, hk * R + r] = ms[r] + T.log2(T.max(ls[r], T.float32(1e-30)))

    return batch_decode_paged_kv


def _kernel_params(func: tvm.tirx.PrimFunc):
    """(H_qo, H_kv, D, page_size, dtype) read off TVM's kernel (Q [B, H_qo, D], pages [.., 2, H_kv, P, D])."""
    import re

    head = func.script().split("):\n", 1)[0]
    q = re.search(r'Q: T\.Buffer\(\("B", (\d+), (\d+)\), "(\w+)"\)', head)
    p = re.search(r'pages: T\.Buffer\(\("max_num_pages", 2, (\d+), (\d+), (\d+)\)', head)
    if not q or not p or p.group(3) != q.group(2):
        return None
    return int(q.group(1)), int(p.group(1)), int(q.group(2)), int(p.group(2)), q.group(3)


def _ragged_params(func: tvm.tirx.PrimFunc):
    """(H_qo, H_kv, D, dtype) of TVM's ragged prefill kernel (q [qo_len, H_qo, D], k/v [kv_len, H_kv, D])."""
    import re

    head = func.script().split("):\n", 1)[0]
    q = re.search(r'q: T\.Buffer\(\("?qo_len"?, (\d+), (\d+)\), "(\w+)"\)', head)
    k = re.search(r'k: T\.Buffer\(\("?kv_len"?, (\d+), (\d+)\)', head)
    v = re.search(r'v: T\.Buffer\(\("?kv_len"?, (\d+), (\d+)\)', head)
    if not q or not k or not v or not (q.group(2) == k.group(2) == v.group(2)):
        return None
    return int(q.group(1)), int(k.group(1)), int(q.group(2)), q.group(3)


def _paged_params(func: tvm.tirx.PrimFunc):
    """(H_qo, H_kv, D, page_size, dtype) of TVM's paged prefill kernel (q [total_len, H_qo, D], pages [.., 2, H_kv, P, D])."""
    import re

    head = func.script().split("):\n", 1)[0]
    q = re.search(r'q: T\.Buffer\(\("?total_len"?, (\d+), (\d+)\), "(\w+)"\)', head)
    p = re.search(r'pages: T\.Buffer\(\("?max_num_pages"?, 2, (\d+), (\d+), (\d+)\)', head)
    if not q or not p or p.group(3) != q.group(2):
        return None
    return int(q.group(1)), int(p.group(1)), int(q.group(2)), int(p.group(2)), q.group(3)


@tvm.transform.module_pass(opt_level=0, name="ReplaceCPUAttention")
def ReplaceCPUAttention(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - pass naming
    """Swap TVM's scalar CPU decode, ragged-prefill and paged-prefill attention kernels for the ones above.

    Matched by function name and checked against the buffer shapes; anything unexpected (head dim
    not a multiple of 16, MLA-style D_qk != D_v, GQA groups that do not divide) is left as TVM wrote it.
    """
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if gv.name_hint == SYMBOL:
            params = _kernel_params(func)
            if params is None:
                continue
            h_qo, h_kv, d, page, dtype = params
            if d % LANES or h_qo % h_kv:
                continue
            if h_qo // h_kv >= GQA_ROWS:
                mod[gv] = decode_attention_tiled(h_kv, h_qo, d, dtype, {}, page)
            else:
                mod[gv] = decode_attention_cpu(h_kv, h_qo, d, dtype, {}, page)
        elif gv.name_hint == RAGGED_SYMBOL:
            params = _ragged_params(func)
            if params is None:
                continue
            h_qo, h_kv, d, dtype = params
            if d % LANES or h_qo % h_kv:
                continue
            mod[gv] = prefill_ragged_tiled(h_kv, h_qo, d, dtype, {})
        elif gv.name_hint == PAGED_SYMBOL:
            params = _paged_params(func)
            if params is None:
                continue
            h_qo, h_kv, d, page, dtype = params
            if d % LANES or h_qo % h_kv:
                continue
            mod[gv] = prefill_paged_tiled(h_kv, h_qo, d, dtype, {}, page)
    return mod
