"""Hugging Face MiniCPM tensor names and shapes (listed once), and how MLC-LLM fuses them into parameters."""
from __future__ import annotations

from dataclasses import dataclass

from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.quantization import ELEMS_PER_WORD, Quantization

EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
# One decoder layer, in the order Hugging Face writes it (and llama.cpp's converter and our tiny
# checkpoints follow); "attn.q" etc. name each tensor's role.
LAYER = (("input_layernorm", "norm"), ("self_attn.q_proj", "attn.q"), ("self_attn.k_proj", "attn.kv"),
         ("self_attn.v_proj", "attn.kv"), ("self_attn.o_proj", "attn.o"), ("post_attention_layernorm", "norm"),
         ("mlp.gate_proj", "mlp.in"), ("mlp.up_proj", "mlp.in"), ("mlp.down_proj", "mlp.out"))


def layer_tensor(i: int, part: str) -> str:
    return f"model.layers.{i}.{part}.weight"


def hf_shapes(config: MiniCPMConfig, tied: bool | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint with its shape, in file order. ``tied`` defaults to the config's."""
    c = config
    h, kv, ff = c.hidden_size, c.num_key_value_heads * c.head_dim, c.intermediate_size
    role_shapes = {"norm": (h,), "attn.q": (h, h), "attn.kv": (kv, h), "attn.o": (h, h), "mlp.in": (ff, h),
                   "mlp.out": (h, ff)}
    shapes = {EMBED: (c.vocab_size, h)}
    for i in range(c.num_hidden_layers):
        shapes.update({layer_tensor(i, part): role_shapes[role] for part, role in LAYER})
    shapes[NORM] = (h,)
    if not (c.tie_word_embeddings if tied is None else tied):
        shapes[LM_HEAD] = (c.vocab_size, h)
    return shapes


@dataclass(frozen=True)
class MLCParam:
    """One MLC module parameter group built from one or more HF tensors (concatenated along rows)."""

    name: str  # MLC module path, e.g. "model.layers.0.self_attn.wqkv_pack"
    sources: tuple[str, ...]  # HF tensor names, concatenated along axis 0
    kind: str  # "linear" | "embedding" | "norm"


def param_plan(config: MiniCPMConfig) -> list[MLCParam]:
    plan = [MLCParam("model.embed_tokens", (EMBED,), "embedding")]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."

        def hf(*parts):
            return tuple(layer_tensor(i, part) for part in parts)

        plan += [
            MLCParam(p + "self_attn.wqkv_pack", hf("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                     "linear"),
            MLCParam(p + "self_attn.o_proj", hf("self_attn.o_proj"), "linear"),
            MLCParam(p + "mlp.gate_up_proj", hf("mlp.gate_proj", "mlp.up_proj"), "linear"),
            MLCParam(p + "mlp.down_proj", hf("mlp.down_proj"), "linear"),
            MLCParam(p + "input_layernorm", hf("input_layernorm"), "norm"),
            MLCParam(p + "post_attention_layernorm", hf("post_attention_layernorm"), "norm"),
        ]
    plan.append(MLCParam("model.norm", (NORM,), "norm"))
    if not config.tie_word_embeddings:
        plan.append(MLCParam("lm_head", (LM_HEAD,), "linear"))
    return plan


def stored_shapes(param: MLCParam, rows: int, cols: int, quant: Quantization) -> dict[str, tuple[tuple, str]]:
    """The tensors one MLC parameter is stored as: {name: (shape, dtype)}. ``rows``x``cols`` is [N, K]."""
    if param.kind == "norm":
        return {param.name + ".weight": ((cols,), quant.model_dtype)}
    if not quant.quantized:
        return {param.name + ".weight": ((rows, cols), quant.model_dtype)}
    g = quant.groups(cols)
    words = g * quant.group_size // ELEMS_PER_WORD
    if quant.layout == "KN" and param.kind == "linear":
        return {param.name + ".q_weight": ((words, rows), "uint32"), param.name + ".q_scale": ((g, rows), quant.model_dtype)}
    return {param.name + ".q_weight": ((rows, words), "uint32"), param.name + ".q_scale": ((rows, g), quant.model_dtype)}
