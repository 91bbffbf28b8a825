"""HF MiniCPM checkpoint -> one GGUF file for llama.cpp / LLMFarm, streaming tensor by tensor.

The header, metadata and tensor table are written by the ``gguf`` package; tensor data follows in
row chunks, quantized by the compiled kernels (``kernels/gguf_blocks.py``) or, where they cannot run, by the
same arithmetic in numpy (K-quants by ``gguf_kquants``, the 32-blocks by ``gguf.quants``), so memory stays
bounded by the largest Q/K matrix or a row chunk (``Checkpoint.row_chunks``), whichever is bigger.
"""
from __future__ import annotations

import math
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.formats import gguf_kquants
from mcpm_mobile.formats.gguf_mixture import FILE_TYPES, tensor_type
from mcpm_mobile.formats.gguf_vocab import Vocab, read_vocab
from mcpm_mobile.kernels import gguf_blocks
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.param_map import hf_shapes
from mcpm_mobile.support.atomic import atomic_file, check_output_file
from mcpm_mobile.support.output import Output

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType


# The GGUF types (``model.quantization.GGUF_TYPES``). Quantized ones take llama-quantize's per-tensor types
# (gguf_mixture): norms stay f32, the output matrix (or the tied embedding) gets Q6_K, the _M mixtures give
# some attn_v / ffn_down layers Q6_K, K-quant rows that are not a multiple of 256 fall back.
FLOAT_TYPES = {"f16": (Q.F16, FT.MOSTLY_F16), "f32": (Q.F32, FT.ALL_F32)}
TYPES = tuple(FILE_TYPES) + tuple(FLOAT_TYPES)
NORM_TYPE = Q.F32
FLOAT_DTYPES = {Q.F32: np.dtype(np.float32), Q.F16: np.dtype(np.float16)}
K_QUANTS = {Q.Q4_K: "q4_k", Q.Q5_K: "q5_k", Q.Q6_K: "q6_k"}


def type_name(qtype: Q) -> str:
    return qtype.name.lower()


def file_type(weight_type: str) -> FT:
    return FILE_TYPES[weight_type].file_type if weight_type in FILE_TYPES else FLOAT_TYPES[weight_type][1]


def quantize(data: np.ndarray, qtype: Q) -> np.ndarray:
    """Rows of float weights -> GGML bytes: K-quants by our own code, the 32-blocks by the gguf package."""
    if qtype in K_QUANTS:
        return gguf_kquants.quantize_rows(data.reshape(-1, data.shape[-1]), K_QUANTS[qtype])
    return gguf.quants.quantize(data, qtype)

class _Writer(gguf.GGUFWriter):
    """gguf's writer with long arrays of plain str/bytes, float or int (the vocabulary) packed in bulk: its
    one ``struct.pack`` per item takes about 0.2 s for a 73k-token vocabulary. The bytes are the same."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        body = None
        if vtype == gguf.GGUFValueType.ARRAY and sub_type is None and self.endianess == gguf.GGUFEndian.LITTLE:
            body = _bulk_array(val)
        if body is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (struct.pack("<I", vtype) if add_vtype else b"") + body


def _bulk_array(val) -> bytes | None:
    """Little-endian GGUF array bytes (item type, count, items) of ``val``, or None to leave it to gguf."""
    if not isinstance(val, list) or len(val) < 256:
        return None
    kinds = set(map(type, val))
    if kinds <= {str, bytes}:
        items = (v.encode("utf-8") if isinstance(v, str) else v for v in val)
        body, ltype = b"".join(struct.pack("<Q", len(v)) + v for v in items), gguf.GGUFValueType.STRING
    elif kinds == {float}:
        arr = np.array(val, np.float64)
        if not (np.isfinite(arr).all() and np.abs(arr).max() <= np.finfo(np.float32).max):
            return None  # struct.pack refuses overflow; leave those to it
        body, ltype = arr.astype("<f4").tobytes(), gguf.GGUFValueType.FLOAT32
    elif kinds == {int}:
        if min(val) < -(1 << 31) or max(val) >= 1 << 31:
            return None
        body, ltype = np.array(val, "<i8").astype("<i4").tobytes(), gguf.GGUFValueType.INT32
    else:
        return None
    return struct.pack("<IQ", ltype, len(val)) + body


# minicpm: upstream llama.cpp and guinmoon's LLMFarm (arch "minicpm", scales read from the file).
# openbmb: OpenBMB's LLMFarm fork, whose llama.cpp bakes MiniCPM-2B's scales into arch "llama".
GGUF_MAGIC = (b"GGUF",)
FLAVOR_ARCH = {"minicpm": "minicpm", "openbmb": "llama"}
OPENBMB_CONSTANTS = {"scale_emb": 12.0, "residual_scale": 1.4 / math.sqrt(40.0), "logit_scale": 9.0}

# MiniCPM's own chat template, used when tokenizer_config.json has none.
DEFAULT_CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}{{'<用户>' + "
                         "message['content'].strip() + '<AI>'}}{% else %}{{message['content'].strip()}}{% endif %}"
                         "{% endfor %}")


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name
    source: str  # HF name
    shape: tuple[int, ...]  # HF (out, in); GGUF's ne is this reversed
    qtype: Q
    rope_heads: int = 0  # > 0: rows reordered for llama.cpp's RoPE with this many heads
    values: tuple[float, ...] | None = None  # data not read from the checkpoint (LongRoPE factors)

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Q/K projection from HF's rotate-half order to llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`llama_permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_plan(config: MiniCPMConfig, weight_type: str = "q4_0") -> list[PlannedTensor]:
    """Every tensor of the GGUF file, in file order (the checkpoint's)."""
    c = config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MINICPM, c.num_hidden_layers)
    rope_heads = {"self_attn.q_proj": c.num_attention_heads, "self_attn.k_proj": c.num_key_value_heads}
    plan = rope_factor_tensors(c)
    for hf, shape in hf_shapes(c).items():
        name = names.get_name(hf, try_suffixes=(".weight",))
        if len(shape) == 1:
            qtype = NORM_TYPE
        elif weight_type in FLOAT_TYPES:
            qtype = FLOAT_TYPES[weight_type][0]
        else:
            qtype = tensor_type(name, shape[-1], weight_type, c.num_hidden_layers, c.tie_word_embeddings)
        heads = next((n for part, n in rope_heads.items() if hf.endswith(f".{part}.weight")), 0)
        plan.append(PlannedTensor(name, hf, shape, qtype, heads))
    return plan


def rope_factor_tensors(c: MiniCPMConfig) -> list[PlannedTensor]:
    """``rope_factors_long``/``rope_factors_short`` for LongRoPE, as llama.cpp's converter names them.

    llama.cpp takes the long tensor when its context exceeds ``rope.scaling.original_context_length``,
    OpenBMB's model takes the long factors at every position when ``max_position_embeddings`` exceeds
    ``original_max_position_embeddings``. So when it does, both tensors hold the long factors (the
    reference never applies the short ones then); when the two are equal, each holds its own and both
    engines switch to the long ones only past ``max_position_embeddings``. See docs/longrope.md."""
    lr = c.longrope
    if lr is None:
        return []
    short = lr.long_factor if lr.uses_long else lr.short_factor
    names = gguf.TENSOR_NAMES
    return [PlannedTensor(names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", "", (len(lr.long_factor),), Q.F32,
                          values=lr.long_factor),
            PlannedTensor(names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", "", (len(short),), Q.F32,
                          values=short)]


def check_openbmb(config: MiniCPMConfig, config_path: Path) -> None:
    """Refuse checkpoints that OpenBMB's fork would run with the wrong (hard-coded MiniCPM-2B) scales."""
    have = {"scale_emb": float(config.scale_emb), "residual_scale": config.residual_scale,
            "logit_scale": config.logit_scale}
    wrong = [f"{k} {have[k]:.6g} (needs {v:.6g})" for k, v in OPENBMB_CONSTANTS.items()
             if not math.isclose(have[k], v, rel_tol=1e-6)]
    if not config.tie_word_embeddings:
        wrong.append("untied lm_head (the fork always uses the embedding as output)")
    if config.longrope is not None:
        wrong.append("LongRoPE rope_scaling (the fork runs MiniCPM-2B's plain RoPE)")
    if wrong:
        raise fail(config_path, "$flavor openbmb: OpenBMB's LLMFarm fork hard-codes MiniCPM-2B's scalings "
                                "(scale_emb 12, scale_depth/sqrt(layers) = 1.4/sqrt(40), hidden/dim_model_base 9, "
                                f"tied); this checkpoint has {', '.join(wrong)}; use $flavor minicpm")


def _check(ckpt: Checkpoint, weight_type: str, flavor: str, out_path: Path) -> None:
    if weight_type not in TYPES:
        raise MCPMError(f"$weight_type: unknown '{weight_type}' (choose from {', '.join(TYPES)})")
    if flavor not in FLAVOR_ARCH:
        raise MCPMError(f"$flavor: unknown '{flavor}' (choose from {', '.join(FLAVOR_ARCH)})")
    if out_path.suffix != ".gguf":
        raise fail(out_path, "the output file name must end in .gguf (LLMFarm lists only .gguf and .bin files)")
    if out_path.is_dir():
        raise fail(out_path, "is a directory; give the GGUF file to write")
    c, cfg_path = ckpt.config, ckpt.dir / "config.json"
    if c.head_dim % 2:
        raise fail(cfg_path, f"head_dim {c.head_dim} is odd; RoPE needs an even head dimension")
    block = 32  # q4_0 / q8_0 have no fallback type; K-quants fall back as llama-quantize does
    for key in ("hidden_size", "intermediate_size"):
        if weight_type in ("q4_0", "q8_0") and getattr(c, key) % block:
            raise fail(cfg_path, f"{key} {getattr(c, key)} is not a multiple of {block}, the {weight_type} block size; "
                                 "use $weight_type f16 or f32")
    if flavor == "openbmb":
        check_openbmb(c, cfg_path)


def _add_metadata(w: gguf.GGUFWriter, c: MiniCPMConfig, vocab: Vocab, weight_type: str, flavor: str, name: str) -> None:
    w.add_name(name)
    w.add_file_type(int(file_type(weight_type)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_theta))
    if c.longrope is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        w.add_rope_scaling_orig_ctx_len(c.longrope.original_max_position_embeddings)
        w.add_rope_scaling_attn_factors(c.longrope.amplitude)
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    if flavor == "minicpm":
        # Optional in llama.cpp, but its defaults are MiniCPM-2B's, and the logit one is inverted.
        w.add_embedding_scale(float(c.scale_emb))
        w.add_residual_scale(c.residual_scale)
        w.add_logit_scale(c.logit_scale)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    if vocab.eot_id is not None:
        w.add_eot_token_id(vocab.eot_id)
    if vocab.unk_id is not None:
        w.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        w.add_pad_token_id(vocab.pad_id)
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    w.add_add_space_prefix(vocab.add_space_prefix)
    w.add_chat_template(vocab.chat_template or DEFAULT_CHAT_TEMPLATE)


def export_gguf(ckpt: Checkpoint | Path | str, out_path: Path | str, weight_type: str = "q4_0",
                flavor: str = "minicpm", output: Output = Output(), force: bool = False) -> dict:
    """Write the checkpoint as one GGUF file (temp file, renamed at the end). Returns a summary."""
    out_path = Path(out_path)
    ckpt = Checkpoint.of(ckpt)
    _check(ckpt, weight_type, flavor, out_path)
    check_output_file(out_path, force, GGUF_MAGIC, inputs=(ckpt.dir,))
    c = ckpt.config
    vocab = read_vocab(ckpt.dir, c)
    plan = tensor_plan(c, weight_type)
    start = time.perf_counter()
    with atomic_file(out_path, force, GGUF_MAGIC, inputs=(ckpt.dir,)) as tmp:
        w = _Writer(tmp, FLAVOR_ARCH[flavor])
        try:
            _add_metadata(w, c, vocab, weight_type, flavor, c.name_or_path or ckpt.dir.name)
            for t in plan:
                if t.qtype in FLOAT_DTYPES:
                    w.add_tensor_info(t.name, t.shape, FLOAT_DTYPES[t.qtype], t.nbytes)
                else:
                    w.add_tensor_info(t.name, gguf.quant_shape_to_byte_shape(t.shape, t.qtype), np.dtype(np.uint8),
                                      t.nbytes, raw_dtype=t.qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            fout = w.fout[0]
            with output.progress(f"Writing GGUF ({weight_type}, {flavor})", ckpt.weight_bytes) as advance:
                for t in plan:
                    w.write_padding(fout, fout.tell())  # data offsets are aligned, as gguf's own writer does
                    written = sum(_write_tensor(ckpt, t, fout, advance))
                    if written != t.nbytes:
                        raise AssertionError(f"{t.name}: wrote {written} bytes, planned {t.nbytes}")
        finally:
            w.close()
    seconds = time.perf_counter() - start
    size = out_path.stat().st_size
    params = sum(math.prod(t.shape) for t in plan)
    counts = dict(Counter(type_name(t.qtype) for t in plan))
    return {
        "output": str(out_path), "type": weight_type, "flavor": flavor, "arch": FLAVOR_ARCH[flavor], "tensors": len(plan),
        "tensor_types": counts, "params": params, "bytes": size, "bits_per_param": round(8 * size / params, 4),
        "input_bytes": ckpt.weight_bytes, "seconds": round(seconds, 3),
    }


def _write_tensor(ckpt: Checkpoint, t: PlannedTensor, fout, advance):
    """Convert ``t`` and append it to ``fout``; yields the number of bytes written per chunk.

    Q4_0/Q8_0/Q4_K/Q5_K/Q6_K rows go through the compiled kernels (``kernels/gguf_blocks.py``) straight from the stored
    bytes (a private map of each chunk's rows); where a kernel cannot run or flags a chunk, that chunk takes the
    numpy path (which reports NaN/Inf)."""
    if t.values is not None:
        data = np.array(t.values, np.float32)
        data.tofile(fout)
        yield data.nbytes
        return
    info = ckpt.tensors[t.source]
    fast = t.qtype in gguf_blocks.BLOCK
    if t.rope_heads:  # a row permutation across the whole matrix: convert it in one piece
        data = gguf_blocks.quantize(llama_permute(ckpt.format.load(info), t.rope_heads), info.dtype, t.qtype) \
            if fast else None
        if data is None:
            data = quantize(llama_permute(ckpt.get(t.source), t.rope_heads), t.qtype)
        data.tofile(fout)
        advance(info.nbytes)
        yield data.nbytes
        return
    for rows, nbytes in ckpt.row_chunks(t.source):
        data = gguf_blocks.quantize(ckpt.stored(t.source, rows), info.dtype, t.qtype) if fast else None
        if data is None:
            data = quantize(ckpt.get(t.source, rows), t.qtype)
        data.tofile(fout)
        advance(nbytes)
        yield data.nbytes
