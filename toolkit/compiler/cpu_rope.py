"""The KV cache's split + RoPE kernel for the host CPU, with each position's cos/sin computed once.

TVM's ``llama_rope_with_position_map`` (the KV cache's ``tir_split_rotary``, run before every
attention) evaluates ``pow``, ``cos`` and ``sin`` for every element of every head: 18 heads x 64
dims of libm calls per token and layer for MiniCPM4-0.5B. ``ReplaceCPURope`` swaps in a kernel that
evaluates TVM's own frequency expression once per (position, dim < D/2), the values every head shares,
then rotates each head with vector FMAs. It replaces only a kernel structurally equal to the one
TVM builds for the model's theta with the default frequency (no scaling, rotary dim = head dim),
so the results are the same expressions in the same order.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map, rope_freq_default
from tvm.script import tirx as T

SYMBOL = "tir_split_rotary"
PARALLEL_MIN = 8  # tokens: below this (decode) one thread does it, no pool wake-up


def split_rotary_cpu(theta: float, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: str):
    Hq, Hkv, D = num_q_heads, num_kv_heads, head_dim
    H, half = Hq + 2 * Hkv, head_dim // 2
    minus_one = tvm.tirx.const(-1.0, dtype)

    def cos_sin(pos, d):
        """TVM's expressions (``rope_freq_default`` of ``pos * scale``, scale 1) for dims d and d + D/2."""
        cos, sin, bind = rope_freq_default(pos * tvm.tirx.const(1.0, "float32"), d, D, theta, "float32")
        for var, value in bind.items():
            cos, sin = tvm.tirx.Let(var, value, cos), tvm.tirx.Let(var, value, sin)
        return cos, sin

    @T.macro
    def rotate(out, h0, n, s, qkv, cs, sn, apply_rope):
        for h in T.serial(n):
            if apply_rope > 0:
                for d in T.vectorized(half):
                    out[s, h, d] = T.Cast(dtype, cs[d] * T.Cast("float32", qkv[s, h0 + h, d])
                                          + sn[d] * T.Cast("float32", qkv[s, h0 + h, d + half] * minus_one))
                for d in T.vectorized(half):
                    out[s, h, d + half] = T.Cast(dtype, cs[d] * T.Cast("float32", qkv[s, h0 + h, d + half])
                                                 + sn[d] * T.Cast("float32", qkv[s, h0 + h, d]))
            else:
                for d in T.vectorized(D):
                    out[s, h, d] = qkv[s, h0 + h, d]

    @T.macro
    def one_token(s, qkv, position_map, q, k, v, cs, sn, apply_rope):
        if apply_rope > 0:
            for d in T.serial(half):
                cs[d] = cos_sin(position_map[s], d)[0]
                sn[d] = cos_sin(position_map[s], d)[1]
        rotate(q, 0, Hq, s, qkv, cs, sn, apply_rope)
        rotate(k, Hq, Hkv, s, qkv, cs, sn, apply_rope)
        for h in T.serial(Hkv):
            for d in T.vectorized(D):
                v[s, h, d] = qkv[s, Hq + Hkv + h, d]

    @T.prim_func(s_tir=True)
    def fused_rope(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle,
                   var_v: T.handle, apply_rope: T.int64):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, H, D), dtype)
        q = T.match_buffer(var_q, (seq_len, Hq, D), dtype)
        k = T.match_buffer(var_k, (seq_len, Hkv, D), dtype)
        v = T.match_buffer(var_v, (seq_len, Hkv, D), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        if seq_len >= PARALLEL_MIN:
            for s in T.parallel(seq_len):
                with T.sblock("rope_tokens"):
                    vs = T.axis.spatial(seq_len, s)
                    T.reads()
                    T.writes()
                    cs = T.sblock_alloc_buffer((half,), "float32")
                    sn = T.sblock_alloc_buffer((half,), "float32")
                    one_token(vs, qkv, position_map, q, k, v, cs, sn, apply_rope)
        else:
            for s in T.serial(seq_len):
                with T.sblock("rope_token"):
                    vs = T.axis.spatial(seq_len, s)
                    T.reads()
                    T.writes()
                    cs = T.sblock_alloc_buffer((half,), "float32")
                    sn = T.sblock_alloc_buffer((half,), "float32")
                    one_token(vs, qkv, position_map, q, k, v, cs, sn, apply_rope)

    return fused_rope


def ReplaceCPURope(theta: float, num_q_heads: int, num_kv_heads: int,  # noqa: N802 - pass naming
                   head_dim: int) -> tvm.transform.Pass:
    """Replace the model's ``tir_split_rotary`` (TVM's kernel for these heads and ``theta``, either dtype)."""
    own = {dtype: llama_rope_with_position_map(theta, 1.0, head_dim, num_q_heads, num_kv_heads, dtype, {}, head_dim)
           for dtype in ("float16", "float32")} if head_dim % 2 == 0 else {}

    @tvm.transform.module_pass(opt_level=0, name="ReplaceCPURope")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or not gv.name_hint.startswith(("fused_rope", SYMBOL)):
                continue
            for dtype, tvm_own in own.items():
                if tvm_ffi.structural_equal(tvm_own.without_attr("global_symbol"), func.without_attr("global_symbol"),
                                            map_free_vars=True):
                    new = split_rotary_cpu(theta, num_q_heads, num_kv_heads, head_dim, dtype)
                    symbol = func.attrs.get("global_symbol") if func.attrs else None
                    mod[gv] = new.with_attr("global_symbol", symbol) if symbol else new
                    break
        return mod

    return _pass
