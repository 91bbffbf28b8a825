"""Hugging Face MiniCPM tensors -> MLC-LLM parameters (names, fusion, shapes)."""
from __future__ import annotations

from dataclasses import dataclass

from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.quantize.group import GROUP_SIZE, ELEMS_PER_WORD, Quantization, num_groups


@dataclass(frozen=True)
class MLCParam:
    """One MLC module parameter group built from one or more HF tensors (concatenated along rows)."""

    name: str  # MLC module path, e.g. "model.layers.0.self_attn.wqkv_pack"
    sources: tuple[str, ...]  # HF tensor names, concatenated along axis 0
    kind: str  # "linear" | "embedding" | "norm"


def param_plan(config: MiniCPMConfig) -> list[MLCParam]:
    plan = [MLCParam("model.embed_tokens", ("model.embed_tokens.weight",), "embedding")]
    for i in range(config.num_hidden_layers):
        hf, mlc = f"model.layers.{i}.", f"model.layers.{i}."
        plan += [
            MLCParam(mlc + "self_attn.wqkv_pack",
                     tuple(hf + f"self_attn.{p}_proj.weight" for p in "qkv"), "linear"),
            MLCParam(mlc + "self_attn.o_proj", (hf + "self_attn.o_proj.weight",), "linear"),
            MLCParam(mlc + "mlp.gate_up_proj", (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"), "linear"),
            MLCParam(mlc + "mlp.down_proj", (hf + "mlp.down_proj.weight",), "linear"),
            MLCParam(mlc + "input_layernorm", (hf + "input_layernorm.weight",), "norm"),
            MLCParam(mlc + "post_attention_layernorm", (hf + "post_attention_layernorm.weight",), "norm"),
        ]
    plan.append(MLCParam("model.norm", ("model.norm.weight",), "norm"))
    if not config.tie_word_embeddings:
        plan.append(MLCParam("lm_head", ("lm_head.weight",), "linear"))
    return plan


def stored_shapes(param: MLCParam, rows: int, cols: int, quant: Quantization) -> dict[str, tuple[tuple, str]]:
    """The tensors one MLC parameter is stored as: {name: (shape, dtype)}. ``rows``x``cols`` is [N, K]."""
    if param.kind == "norm":
        return {param.name + ".weight": ((cols,), quant.model_dtype)}
    if not quant.quantized:
        return {param.name + ".weight": ((rows, cols), quant.model_dtype)}
    g = num_groups(cols)
    words = g * GROUP_SIZE // ELEMS_PER_WORD
    if quant.layout == "KN" and param.kind == "linear":
        return {param.name + ".q_weight": ((words, rows), "uint32"), param.name + ".q_scale": ((g, rows), quant.model_dtype)}
    return {param.name + ".q_weight": ((rows, words), "uint32"), param.name + ".q_scale": ((rows, g), quant.model_dtype)}
