"""MiniCPM 1.x (dense) in TVM's Relax ``nn`` frontend, exporting MLC-LLM's function interface.

Architecture (Hugging Face ``modeling_minicpm.py`` semantics)::

    h = embed(ids) * scale_emb
    for each layer:  h = h + Attn(RMSNorm(h)) * scale_depth / sqrt(L)
                     h = h + MLP(RMSNorm(h))  * scale_depth / sqrt(L)
    logits = (RMSNorm(h) / (hidden_size / dim_model_base)) @ W_head^T      (W_head = embedding if tied)

Attention uses a fused ``wqkv_pack`` (q, k, v concatenated along the output dim), RoPE applied
inside TVM's paged KV cache (``RopeMode.NORMAL`` = rotate-half on the unpermuted weights) and
grouped-query heads. With LongRoPE the model rotates q and k itself (:func:`longrope`, positions from
the cache) and the cache runs in ``RopeMode.NONE``: TVM 0.27's own longrope kernel cannot be built
(``position_embedding.py`` tests a Buffer's truth value) and would switch factors by call length (see
docs/longrope.md). The MLP is SwiGLU with a fused ``gate_up_proj``.

Parameter names, shapes and dtypes are exactly those ``mcpm_mobile.quantize`` writes (MLC-LLM's):
``model.embed_tokens.{q_weight,q_scale}``, ``model.layers.{i}.self_attn.wqkv_pack.*``,
``.self_attn.o_proj.*``, ``.mlp.gate_up_proj.*``, ``.mlp.down_proj.*``, ``.input_layernorm.weight``,
``.post_attention_layernorm.weight``, ``model.norm.weight`` and ``lm_head.*`` when untied;
``X.weight`` instead of ``X.q_weight``/``X.q_scale`` for q0f16/q0f32.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.quantized_linear import QEmbedding, QLinear
from mcpm_mobile.model.quantization import Quantization
from mcpm_mobile.model.rope import inv_freq


class MiniCPMAttention(nn.Module):
    def __init__(self, cfg: MiniCPMConfig, quant: Quantization):
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dt = quant.model_dtype
        self.wqkv_pack = QLinear(cfg.hidden_size, (self.hq + 2 * self.hkv) * self.d, dt, quant.quantized, quant.layout)
        self.o_proj = QLinear(self.hq * self.d, cfg.hidden_size, dt, quant.quantized, quant.layout)

    def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int, rope=None) -> nn.Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.wqkv_pack(x), (b, s, self.hq + 2 * self.hkv, self.d))
        if rope is not None:
            positions, inv, amplitude = rope
            rotated = longrope(op.reshape(qkv, (b * s, self.hq + 2 * self.hkv, self.d)), positions, inv,
                               self.hq + self.hkv, amplitude)
            qkv = op.reshape(rotated, (b, s, self.hq + 2 * self.hkv, self.d))
        o = kv.attention_with_fused_qkv(layer_id, qkv, self.hq, sm_scale=self.d ** -0.5)
        return self.o_proj(op.reshape(o, (b, s, self.hq * self.d)))


class MiniCPMMLP(nn.Module):
    def __init__(self, cfg: MiniCPMConfig, quant: Quantization):
        super().__init__()
        self.inter = cfg.intermediate_size
        dt = quant.model_dtype
        self.gate_up_proj = QLinear(cfg.hidden_size, 2 * self.inter, dt, quant.quantized, quant.layout)
        self.down_proj = QLinear(self.inter, cfg.hidden_size, dt, quant.quantized, quant.layout)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class MiniCPMDecoderLayer(nn.Module):
    def __init__(self, cfg: MiniCPMConfig, quant: Quantization):
        super().__init__()
        dt = quant.model_dtype
        self.self_attn = MiniCPMAttention(cfg, quant)
        self.mlp = MiniCPMMLP(cfg, quant)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dt)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=dt)
        self.residual_scale = cfg.residual_scale

    def forward(self, h: nn.Tensor, kv: PagedKVCache, layer_id: int, rope=None) -> nn.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), kv, layer_id, rope) * self.residual_scale
        return h + self.mlp(self.post_attention_layernorm(h)) * self.residual_scale


class MiniCPMModel(nn.Module):
    def __init__(self, cfg: MiniCPMConfig, quant: Quantization):
        super().__init__()
        self.embed_tokens = QEmbedding(cfg.vocab_size, cfg.hidden_size, quant.model_dtype, quant.quantized)
        self.layers = nn.ModuleList([MiniCPMDecoderLayer(cfg, quant) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=quant.model_dtype)
        self.cfg = cfg

    def forward(self, h: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
        rope = None
        lr = self.cfg.longrope
        if lr is not None:
            b, s, _ = h.shape
            inv = nn.Tensor.from_const(inv_freq(self.cfg.head_dim, self.cfg.rope_theta, lr).astype(np.float32))
            rope = (kv.get_query_positions(b * s), inv, lr.amplitude)
        for i, layer in enumerate(self.layers):
            h = layer(h, kv, i, rope)
        return h


class MiniCPMForCausalLM(nn.Module):
    """The whole model; its methods are the library's Relax functions (see :func:`export_spec`)."""

    def __init__(self, cfg: MiniCPMConfig, quant: Quantization, target: tvm.target.Target, tied: bool):
        super().__init__()
        self.model = MiniCPMModel(cfg, quant)
        self.tied = tied
        if not tied:
            # The final FC is quantized like any linear layer (MLC: quantize_final_fc=True).
            self.lm_head = QLinear(cfg.hidden_size, cfg.vocab_size, quant.model_dtype, quant.quantized, quant.layout)
        self.cfg, self.quant, self.target = cfg, quant, target
        self.dtype = quant.model_dtype

    # --- pieces -------------------------------------------------------------------------------
    def _logits(self, h: nn.Tensor) -> nn.Tensor:
        h = self.model.norm(h) / self.cfg.logit_scale
        if self.tied:
            return self.model.embed_tokens.lm_head_forward(h)
        return self.lm_head(h, out_dtype="float32")

    # --- exported functions ---------------------------------------------------------------------
    def embed(self, input_ids: nn.Tensor) -> nn.Tensor:
        return self.model.embed_tokens(input_ids) * self.cfg.scale_emb

    def prefill(self, input_embed: nn.Tensor, paged_kv_cache: PagedKVCache):
        h = self.model(input_embed, paged_kv_cache)

        def last(x: te.Tensor):
            b, s, d = x.shape
            return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="index")

        return self._logits(op.tensor_expr_op(last, "index", [h])), paged_kv_cache

    def decode(self, input_embed: nn.Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: nn.Tensor, logit_positions: nn.Tensor, paged_kv_cache: PagedKVCache):
        h = self.model(input_embeds, paged_kv_cache)

        def gather(x: te.Tensor, pos: te.Tensor):
            # a plain gather (op.take legalizes to topi's "fast" take, which logs a warning at every compile)
            return te.compute((x.shape[0], pos.shape[0], x.shape[2]), lambda b, i, k: x[b, pos[i], k], name="take")

        return self._logits(op.tensor_expr_op(gather, "take", [h, logit_positions])), paged_kv_cache

    def batch_decode(self, input_embeds: nn.Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def batch_verify(self, input_embeds: nn.Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_tir_paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
                                  support_sliding_window) -> PagedKVCache:
        c = self.cfg
        return TIRPagedKVCache(
            attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size, page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=tvm.relax.ShapeExpr([0, c.num_hidden_layers]),
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, qk_head_dim=c.head_dim, v_head_dim=c.head_dim,
            mla_original_qk_head_dim=0, mla_original_v_head_dim=0, rope_scale=1,
            rope_mode=RopeMode.NONE if c.longrope else RopeMode.NORMAL,
            rope_theta=c.rope_theta, rope_scaling={}, rope_ext_factors=tvm.relax.prim_value(0),
            rotary_dim=c.head_dim, enable_disaggregation=False, dtype=self.dtype, target=self.target)

    def export_spec(self) -> dict:
        h, dt = self.cfg.hidden_size, self.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, h], dt), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {"input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                              "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                              "paged_kv_cache": kv, "$": packed},
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, h], dt), "paged_kv_cache": kv,
                             "$": packed},
            "batch_verify": {"input_embeds": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv,
                             "$": packed},
            "create_tir_paged_kv_cache": {
                "max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int, "page_size": int,
                "support_sliding_window": int, "$": {"param_mode": "none", "effect_mode": "none"}},
        }


def longrope(qkv: nn.Tensor, positions: nn.Tensor, inv: nn.Tensor, rotated_heads: int, amplitude: float):
    """Rotate-half RoPE on the first ``rotated_heads`` heads of ``qkv`` [n, heads, d] (q and k, not v).

    Float32 math as TVM's own rope kernel: ``angle = position * inv[j mod d/2]`` with the LongRoPE-divided
    frequencies ``inv``, cos and sin times ``amplitude``. Opaque, so it is not fused into the qkv GEMV
    (whose schedules match the plain dequantize-matmul)."""
    def compute(x: te.Tensor, pos: te.Tensor, freq: te.Tensor):
        half = int(x.shape[2]) // 2
        amp = tirx.const(amplitude, "float32")

        def f(i, h, j):
            angle = pos[i].astype("float32") * freq[j % half]
            other = tirx.if_then_else(j < half, -x[i, h, j + half], x[i, h, j - half]).astype("float32")
            out = (tirx.cos(angle) * x[i, h, j].astype("float32") + tirx.sin(angle) * other) * amp
            return tirx.if_then_else(h < rotated_heads, out.astype(x.dtype), x[i, h, j])

        return te.compute(x.shape, f, name="longrope")

    return op.tensor_expr_op(compute, "longrope", [qkv, positions, inv], attrs={"op_pattern": 8})


def build_model(cfg: MiniCPMConfig, quant: Quantization, target: tvm.target.Target, tied: bool | None = None):
    """The nn.Module for ``cfg`` under ``quant``; ``tied`` defaults to ``cfg.tie_word_embeddings``."""
    if tied is None:
        tied = bool(cfg.tie_word_embeddings)
    return MiniCPMForCausalLM(cfg, quant, target, tied)


def export(model: MiniCPMForCausalLM):
    """Relax IRModule plus ``[(name, nn.Parameter)]`` in the packed ``params`` order."""
    return model.export_tvm(spec=model.export_spec())

