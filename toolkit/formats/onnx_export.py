"""HF MiniCPM checkpoint -> ONNX decoder for onnxruntime / onnxruntime-genai (CPU, Android), streaming.

The directory written holds ``model.onnx`` (graph only), ``model.onnx.data`` (every weight, page
aligned), ``genai_config.json`` and the tokenizer files; onnxruntime-genai loads it as it is.

Graph (opset 17 plus these ``com.microsoft`` ops, all in onnxruntime's mobile builds; names follow
onnxruntime-genai's builder)::

    x   = GatherBlockQuantized(embed codes, input_ids)                 embedding, INT4
    per layer i:
        h, x = SkipSimplifiedLayerNormalization(branch, x)              (layer 0: RMSNorm in standard ops)
        q|k|v = MatMulNBits(h)                                          one fused INT4 matmul
        a, present.i.* = GroupQueryAttention(q|k|v, past_key_values.i.*) rotate-half RoPE inside (cos/sin caches)
        branch = MatMulNBits(a) (o_proj)
        h, x = SkipSimplifiedLayerNormalization(branch, x)
        branch = MatMulNBits(silu(MatMulNBits(h)) * MatMulNBits(h))     down(silu(gate) * up)
    h = SkipSimplifiedLayerNormalization(branch, x);  logits = MatMulNBits(h)   (lm_head), every position

MiniCPM's muP scalings are all folded into the float32 per-block scales of the INT4 weights, after
quantizing the unscaled weight, so the INT4 codes are exactly those of the unscaled weight:

* ``scale_depth / sqrt(num_layers)`` into ``o_proj`` and ``down_proj`` (the residual stream is plain);
* ``scale_emb`` into the embedding's scales;
* ``1 / (hidden_size / dim_model_base)`` into the lm_head's scales.

With tied embeddings the embedding and the lm_head share one INT4 code tensor and carry two scale
tensors (input ×scale_emb, output ÷logit scale). Nothing muP-related is left in the graph. Each fold
is one float32 rounding of a scale (relative 6e-8), far below the INT4 error.

Activations and the KV cache are float32. ``accuracy_level`` is MatMulNBits' compute type
(0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations: fastest on ARM, not bit-faithful).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.formats import chat_config, genai_config
from mcpm_mobile.formats.onnx_weights import BLOCK_SIZES, ExternalData, quantize_blocks, quantize_stored
from mcpm_mobile.model import chat_format, rope
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.quantization import num_groups
from mcpm_mobile.model.tokenizer import copy_tokenizer_files
from mcpm_mobile.support.atomic import atomic_dir
from mcpm_mobile.support.jsonio import read_json
from mcpm_mobile.support.output import Output

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
OPSET = 17
MS = "com.microsoft"
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
METADATA_KEY = "mcpm_mobile"


class GraphBuilder:
    """Nodes, initializers and constants of one graph; weights go straight to the external-data file."""

    def __init__(self, data: ExternalData):
        self.data = data
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.constants: dict[tuple, str] = {}

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "",
             **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain or None, **attrs))
        return names[0] if outputs == 1 else names

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.data.add(name, array))
        return name

    def weight_parts(self, name: str, dtype, shape, parts) -> str:
        self.initializers.append(self.data.add_parts(name, dtype, shape, parts))
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small inline constant (shapes, axes, epsilon)."""
        arr = np.asarray(values, dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.constants:
            name = f"/model/constants/{arr.dtype.name}/{arr.tolist()}"
            self.initializers.append(onnx.numpy_helper.from_array(arr, name))
            self.constants[key] = name
        return self.constants[key]


class Exporter:
    """Writes one checkpoint's graph block by block, streaming each weight through :class:`GraphBuilder`."""

    def __init__(self, ckpt: Checkpoint, g: GraphBuilder, block: int, accuracy_level: int, context: int, advance):
        self.ckpt, self.c, self.g = ckpt, ckpt.config, g
        self.block, self.accuracy_level, self.context, self.advance = block, accuracy_level, context, advance

    # --- weights -------------------------------------------------------------------------------
    def quantized_rows(self, sources: tuple[str, ...]):
        """(codes, scales) of row blocks over the row-concatenation of ``sources``: from the stored bytes by the
        compiled kernel where it can (``quantize_stored``), else from float32 rows in numpy (which also
        reports NaN/Inf through ``Checkpoint.get``). Each block of rows is mapped on its own."""
        for name in sources:
            for rows, nbytes in self.ckpt.row_chunks(name):
                done = quantize_stored(self.ckpt.stored(name, rows), self.ckpt.tensors[name].dtype, self.block)
                yield done or quantize_blocks(self.ckpt.get(name, rows), self.block)
                self.advance(nbytes)

    def quantized(self, name: str, sources: tuple[str, ...]) -> tuple[str, np.ndarray, int, int]:
        """Write the INT4 codes of ``sources`` (rows concatenated) as ``{name}.qweight``.

        Returns (codes name, unscaled float64 block scales [N, blocks], N, K)."""
        n = sum(self.ckpt.tensors[s].shape[0] for s in sources)
        k = self.ckpt.tensors[sources[0]].shape[1]
        scale_parts = []

        def codes():
            for b, s in self.quantized_rows(sources):
                scale_parts.append(s)
                yield b

        shape = (n, num_groups(k, self.block), self.block // 2)
        codes_name = self.g.weight_parts(f"{name}.qweight", np.uint8, shape, codes())
        return codes_name, np.concatenate(scale_parts).astype(np.float64), n, k

    def scales(self, name: str, scales: np.ndarray, factor: float, shape: tuple | None = None) -> str:
        """Block scales with a muP factor folded in, rounded once to float32."""
        return self.g.weight(name, (scales * factor).astype(np.float32).reshape(shape or scales.shape))

    def matmul(self, x: str, name: str, sources: tuple[str, ...], factor: float = 1.0) -> str:
        codes, scales, n, k = self.quantized(name, sources)
        return self.g.node("MatMulNBits", [x, codes, self.scales(f"{name}.scales", scales, factor)],
                           f"/model/{name}/MatMulNBits", domain=MS, K=k, N=n, bits=4, block_size=self.block,
                           accuracy_level=self.accuracy_level)

    # --- blocks ----------------------------------------------------------------------------------
    def mask_lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's ``seqlens_k`` (valid tokens - 1) and ``total_sequence_length`` from the mask."""
        g, base = self.g, "/model/attn_mask_reformat"
        total = g.node("ReduceSum", ["attention_mask", g.const([1])], f"{base}/ReduceSum", keepdims=0)
        seqlens = g.node("Sub", [total, g.const(1)], f"{base}/Sub")
        seqlens = g.node("Cast", [seqlens], f"{base}/Sub/Cast", to=TensorProto.INT32)
        shape = g.node("Shape", ["attention_mask"], f"{base}/Shape")
        length = g.node("Gather", [shape, g.const(1)], f"{base}/Gather", axis=0)
        return seqlens, g.node("Cast", [length], f"{base}/Gather/Cast", to=TensorProto.INT32)

    def embedding(self) -> tuple[str, str | None]:
        """Input embedding (×scale_emb folded). Returns (hidden, lm_head scales name when tied)."""
        c, g = self.c, self.g
        codes, scales, n, k = self.quantized("model.embed_tokens", ("model.embed_tokens.weight",))
        blocks = num_groups(k, self.block)
        # GatherBlockQuantized wants the scales shaped like the codes, last axis counted in blocks: [V, blocks, 1]
        gather_scales = self.scales("model.embed_tokens.scales", scales, c.scale_emb, (n, blocks, 1))
        tied_scales = (self.scales("model.embed_tokens.scales_lm_head", scales, 1.0 / c.logit_scale)
                       if c.tie_word_embeddings else None)
        rows = g.node("GatherBlockQuantized", [codes, "input_ids", gather_scales],
                      "/model/embed_tokens/GatherBlockQuantized", domain=MS, bits=4, block_size=self.block,
                      gather_axis=0, quantize_axis=2)
        x = g.node("Reshape", [rows, g.const([0, 0, -1])], "/model/embed_tokens/Reshape")
        if blocks * self.block != k:
            x = g.node("Slice", [x, g.const([0]), g.const([k]), g.const([-1])], "/model/embed_tokens/Slice")
        return x, tied_scales

    def rms_norm(self, x: str, weight_name: str, name: str) -> str:
        """RMSNorm in standard ops (only before layer 0; every other norm is a skip norm)."""
        g = self.g
        gamma = g.weight(weight_name, self.ckpt.get(weight_name))
        self.advance(self.ckpt.tensors[weight_name].nbytes)
        mean = g.node("ReduceMean", [g.node("Mul", [x, x], f"{name}/Mul")], f"{name}/ReduceMean", axes=[-1], keepdims=1)
        std = g.node("Sqrt", [g.node("Add", [mean, g.const(self.c.rms_norm_eps, np.float32)], f"{name}/Add")],
                     f"{name}/Sqrt")
        return g.node("Mul", [g.node("Div", [x, std], f"{name}/Div"), gamma], f"{name}/Mul_1")

    def skip_norm(self, branch: str, residual: str, weight_name: str, name: str) -> tuple[str, str]:
        """(RMSNorm(branch + residual) * gamma, branch + residual)."""
        gamma = self.g.weight(weight_name, self.ckpt.get(weight_name))
        self.advance(self.ckpt.tensors[weight_name].nbytes)
        normed, _, _, total = self.g.node("SkipSimplifiedLayerNormalization", [residual, branch, gamma], name,
                                          outputs=[f"{name}/output_0", "", "", f"{name}/output_3"],
                                          domain=MS, epsilon=self.c.rms_norm_eps)
        return normed, total

    def rotary_caches(self) -> tuple[str, str]:
        """cos/sin of ``position * theta^(-2i/d)`` for every position up to the model's context, [context, d/2].

        With LongRoPE the frequencies are divided by the factors OpenBMB's model applies and both tables
        carry its amplitude: GroupQueryAttention computes ``x * cos + rotate_half(x) * sin`` from them."""
        cos, sin = rope.cos_sin(self.context, self.c.head_dim, self.c.rope_theta, self.c.longrope)
        return (self.g.weight("cos_cache", cos.astype(np.float32)),
                self.g.weight("sin_cache", sin.astype(np.float32)))

    def attention(self, i: int, h: str, lengths: tuple[str, str], rotary: tuple[str, str]) -> str:
        c, p = self.c, f"model.layers.{i}.self_attn"
        qkv = self.matmul(h, f"{p}.qkv_proj", (f"{p}.q_proj.weight", f"{p}.k_proj.weight", f"{p}.v_proj.weight"))
        out = self.g.node("GroupQueryAttention",
                          [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", *lengths, *rotary],
                          f"/model/layers.{i}/attn/GroupQueryAttention",
                          outputs=[f"/model/layers.{i}/attn/output_0", f"present.{i}.key", f"present.{i}.value"],
                          domain=MS, num_heads=c.num_attention_heads, kv_num_heads=c.num_key_value_heads,
                          scale=float(c.head_dim ** -0.5), do_rotary=1, rotary_interleaved=0)[0]
        return self.matmul(out, f"{p}.o_proj", (f"{p}.o_proj.weight",), c.residual_scale)

    def mlp(self, i: int, h: str) -> str:
        p, g = f"model.layers.{i}.mlp", self.g
        gate = self.matmul(h, f"{p}.gate_proj", (f"{p}.gate_proj.weight",))
        up = self.matmul(h, f"{p}.up_proj", (f"{p}.up_proj.weight",))
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"/model/layers.{i}/mlp/act/Sigmoid")],
                      f"/model/layers.{i}/mlp/act/Mul")
        act = g.node("Mul", [silu, up], f"/model/layers.{i}/mlp/Mul")
        return self.matmul(act, f"{p}.down_proj", (f"{p}.down_proj.weight",), self.c.residual_scale)

    def lm_head(self, h: str, tied_scales: str | None) -> None:
        c = self.c
        if tied_scales is None:
            codes, scales, n, k = self.quantized("lm_head", ("lm_head.weight",))
            head_scales = self.scales("lm_head.scales", scales, 1.0 / c.logit_scale)
        else:
            codes, head_scales, n, k = "model.embed_tokens.qweight", tied_scales, c.vocab_size, c.hidden_size
        self.g.node("MatMulNBits", [h, codes, head_scales], "/lm_head/MatMulNBits", outputs=["logits"], domain=MS,
                    K=k, N=n, bits=4, block_size=self.block, accuracy_level=self.accuracy_level)

    def decoder(self) -> None:
        x, tied_scales = self.embedding()
        lengths, rotary = self.mask_lengths(), self.rotary_caches()
        h, branch = self.rms_norm(x, "model.layers.0.input_layernorm.weight", "/model/layers.0/input_layernorm"), None
        for i in range(self.c.num_hidden_layers):
            if i > 0:
                h, x = self.skip_norm(branch, x, f"model.layers.{i}.input_layernorm.weight",
                                      f"/model/layers.{i}/input_layernorm/SkipLayerNorm")
            branch = self.attention(i, h, lengths, rotary)
            h, x = self.skip_norm(branch, x, f"model.layers.{i}.post_attention_layernorm.weight",
                                  f"/model/layers.{i}/post_attention_layernorm/SkipLayerNorm")
            branch = self.mlp(i, h)
        h, _ = self.skip_norm(branch, x, "model.norm.weight", "/model/norm/SkipLayerNorm")
        self.lm_head(h, tied_scales)


def graph_io(c: MiniCPMConfig) -> tuple[list, list]:
    """Inputs and outputs with onnxruntime-genai's names and symbolic dims."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    kv = ["batch_size", c.num_key_value_heads, "past_sequence_length", c.head_dim]
    present = ["batch_size", c.num_key_value_heads, "total_sequence_length", c.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch_size", "sequence_length", c.vocab_size])]
    for i in range(c.num_hidden_layers):
        inputs += [helper.make_tensor_value_info(f"past_key_values.{i}.{t}", f, kv) for t in ("key", "value")]
        outputs += [helper.make_tensor_value_info(f"present.{i}.{t}", f, present) for t in ("key", "value")]
    return inputs, outputs


def check_options(ckpt: Checkpoint, block_size: int, accuracy_level: int, context_window: int | None) -> None:
    if block_size not in BLOCK_SIZES:
        raise MCPMError(f"$block_size: {block_size} is not supported by MatMulNBits (choose from "
                                   f"{', '.join(map(str, BLOCK_SIZES))})")
    if accuracy_level not in ACCURACY_LEVELS:
        raise MCPMError(f"$accuracy_level: {accuracy_level} is not one of {', '.join(map(str, ACCURACY_LEVELS))}")
    if ckpt.config.head_dim % 2:
        raise fail(ckpt.dir / "config.json", f"head_dim {ckpt.config.head_dim} is odd; rotary embedding needs it even")
    if context_window is not None and not 16 <= context_window <= ckpt.config.max_position_embeddings:
        raise MCPMError(f"$context_window: {context_window} must be between 16 and max_position_embeddings "
                                       f"{ckpt.config.max_position_embeddings}")


def export_onnx(ckpt: Checkpoint | Path | str, out_dir: Path, block_size: int = 32, accuracy_level: int = 4,
                force: bool = False, output: Output = Output(), context_window: int | None = None) -> dict:
    """Export the checkpoint to an onnxruntime-genai directory ``out_dir``. Returns a summary."""
    ckpt = Checkpoint.of(ckpt)
    check_options(ckpt, block_size, accuracy_level, context_window)
    c = ckpt.config
    context = c.max_position_embeddings
    max_length = context_window or min(context, chat_config.DEFAULT_CONTEXT)
    start = time.perf_counter()
    with atomic_dir(Path(out_dir), force=force, inputs=(ckpt.dir,), kind="onnx") as tmp:
        data = ExternalData(tmp / DATA_FILE)
        g = GraphBuilder(data)
        try:
            with output.progress("Exporting to ONNX", ckpt.weight_bytes) as advance:
                Exporter(ckpt, g, block_size, accuracy_level, context, advance).decoder()
        finally:
            data_bytes = data.close()
        inputs, outputs = graph_io(c)
        graph = helper.make_graph(g.nodes, "minicpm", inputs, outputs, g.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                  producer_name="mcpm-mobile", ir_version=8)
        meta = {"block_size": block_size, "accuracy_level": accuracy_level, "scale_emb": c.scale_emb,
                "residual_scale": c.residual_scale, "logit_scale": c.logit_scale,
                "tie_word_embeddings": c.tie_word_embeddings, "source_fingerprint": ckpt.fingerprint()}
        helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
        onnx.save_model(model, str(tmp / MODEL_FILE))
        with output.stage("Checking the graph with onnx.checker"):
            check_onnx(tmp / MODEL_FILE)
        files = copy_tokenizer_files(ckpt.dir, tmp, ckpt.config.vocab_size)
        if genai_config.ensure_tokenizer_config(tmp, c):
            files.append(genai_config.TOKENIZER_CONFIG)
        generation = read_json(ckpt.dir / "generation_config.json", missing_ok=True, root=ckpt.dir)
        stops = chat_format.detect(ckpt.dir, c).stop_token_ids
        cfg = genai_config.build(c, MODEL_FILE, context, max_length, generation, list(stops))
        (tmp / genai_config.FILENAME).write_text(json.dumps(cfg, indent=2, allow_nan=False), encoding="utf-8")
        written = sorted(p.name for p in tmp.iterdir())
    seconds = time.perf_counter() - start
    return {"output": str(out_dir), "model": MODEL_FILE, "data": DATA_FILE, "bytes": data_bytes,
            "nodes": len(g.nodes), "initializers": len(g.initializers), "block_size": block_size,
            "accuracy_level": accuracy_level, "max_length": max_length, "files": written, "tokenizer_files": files,
            "folded": {"o_proj/down_proj": c.residual_scale, "embedding": c.scale_emb, "lm_head": 1.0 / c.logit_scale},
            "input_bytes": ckpt.weight_bytes, "seconds": round(seconds, 3)}


def check_onnx(path: Path) -> None:
    """onnx.checker's full check (with strict shape inference), on the file so external data stays on disk."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise MCPMError(f"{path}: onnx.checker rejected the exported graph: {' '.join(str(e).split())[:300]}")
