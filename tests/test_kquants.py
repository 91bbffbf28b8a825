"""K-quant GGUFs (q4_k_m, q5_k_m, q6_k): our numpy block math and mixture rules against llama.cpp itself.

- blocks: ggml's own quantizer (``ggml_quantize_chunk`` in the libggml-base that llama-cpp-python ships) on the
  same rows gives the same bytes; gguf-py's dequantizer reads ours back within the format's error;
- files: llama.cpp's ``llama_model_quantize`` on our f16 GGUF of the same checkpoint gives the same type for
  every tensor and the same bytes (up to rare near-ties its compiled float arithmetic decides otherwise);
- quality: the file runs in llama.cpp, its logits match the numpy reference on the dequantized weights, and its
  KL divergence from the float model is within 5 % of llama.cpp's own file of the same type.
"""
import ctypes
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from gguf import GGUFReader

from gguf_weights import dequantized_hf_weights
from mcpm_mobile.eval.evaluate import evaluate
from mcpm_mobile.formats import gguf_kquants
from mcpm_mobile.formats.gguf_export import export_gguf
from mcpm_mobile.formats.gguf_mixture import tensor_type, use_more_bits
from mcpm_mobile.model.tiny import _corpus, write_tiny_checkpoint
from reference_numpy import ReferenceMiniCPM, read_hf_checkpoint

Q = gguf.GGMLQuantizationType
KINDS = {"q4_k": Q.Q4_K, "q5_k": Q.Q5_K, "q6_k": Q.Q6_K}
LLAMA_FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama.h enum llama_ftype
_GGML = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
_GGML.ggml_quantize_chunk.restype = ctypes.c_size_t
_GGML.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]


def ggml_quantize(x: np.ndarray, qtype: Q) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros(x.size // block * size, np.uint8)
    _GGML.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out.reshape(x.shape[0], -1)


def hard_rows() -> np.ndarray:
    """Weights as f16 values (as in an f16 GGUF), with the cases the block math branches on."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((48, 1024)).astype(np.float32) * 0.02
    x[1] *= rng.standard_t(3, 1024).astype(np.float32)  # heavy tails
    x[2, :256] = 0  # an all-zero super-block
    x[3, 256:512] = -0.25  # a constant negative super-block (max == min after clamping the min to 0)
    x[4, 512:544] = 0  # one zero sub-block inside a non-zero super-block
    x[5, 7] = 4.0  # an outlier
    x[6] = np.abs(x[6])  # all positive: the min clamps to 0
    x[7, :16] = 1e-20  # below ggml's GROUP_MAX_EPS
    return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_equal_ggml(kind):
    x = hard_rows()
    ours = gguf_kquants.quantize_rows(x, kind)
    assert ours.shape == (48, 1024 // 256 * gguf_kquants.BLOCK_BYTES[kind])
    theirs = ggml_quantize(x, KINDS[kind])
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_py_reads_ours_back(kind):
    x = hard_rows()
    back = gguf.quants.dequantize(gguf_kquants.quantize_rows(x, kind), KINDS[kind]).reshape(x.shape)
    levels = {"q4_k": 15, "q5_k": 31, "q6_k": 63}[kind]
    for r in (0, 5, 6):  # error within about one step of the super-block's range
        step = (x[r].max() - x[r].min()) / levels
        assert np.abs(back[r] - x[r]).max() <= 1.5 * step, r
    assert np.array_equal(back[2, :256], np.zeros(256)) and np.allclose(back[3, 256:512], -0.25, atol=2e-3)
    rms = np.sqrt(np.mean((back - x) ** 2))
    assert rms < {"q4_k": 2e-3, "q5_k": 1e-3, "q6_k": 7e-4}[kind]


def test_more_bits_less_error():
    x = hard_rows()
    rms = [np.sqrt(np.mean((gguf.quants.dequantize(gguf_kquants.quantize_rows(x, k), q).reshape(x.shape) - x) ** 2))
           for k, q in KINDS.items()]
    assert rms[0] > 1.5 * rms[1] > 1.5 ** 2 * rms[2]


def test_row_length_must_fit_super_blocks():
    with pytest.raises(ValueError, match="not a multiple of 256"):
        gguf_kquants.quantize_rows(np.zeros((2, 320), np.float32), "q4_k")


def test_mixture_on_minicpm_2b_shapes():
    """MiniCPM-2B: 40 layers, hidden 2304 (9 super-blocks), ffn 5760 (not a multiple of 256), tied."""
    more = [i for i in range(40) if use_more_bits(i, 40)]
    assert more == [0, 1, 2, 3, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 35, 36, 37, 38, 39]
    t = lambda name, cols, ft: tensor_type(name, cols, ft, 40, True)  # noqa: E731
    assert t("token_embd.weight", 2304, "q4_k_m") == Q.Q6_K  # tied: the output matrix's type
    assert tensor_type("token_embd.weight", 2304, "q4_k_m", 40, False) == Q.Q4_K
    assert t("blk.0.attn_v.weight", 2304, "q4_k_m") == Q.Q6_K and t("blk.5.attn_v.weight", 2304, "q4_k_m") == Q.Q4_K
    assert t("blk.7.attn_q.weight", 2304, "q4_k_m") == Q.Q4_K
    assert t("blk.0.ffn_down.weight", 5760, "q4_k_m") == Q.Q8_0  # Q6_K falls back
    assert t("blk.5.ffn_down.weight", 5760, "q4_k_m") == Q.Q5_0  # Q4_K falls back
    assert t("blk.5.ffn_down.weight", 5760, "q5_k_m") == Q.Q5_1
    assert t("blk.5.ffn_up.weight", 2304, "q6_k") == Q.Q6_K and t("blk.5.ffn_down.weight", 5760, "q6_k") == Q.Q8_0
    assert t("token_embd.weight", 2304, "q4_0") == Q.Q6_K and t("blk.1.ffn_down.weight", 5760, "q4_0") == Q.Q4_0
    assert t("token_embd.weight", 2304, "q8_0") == Q.Q8_0
    assert tensor_type("output.weight", 96, "q4_k_m", 2, False) == Q.Q8_0  # rows of 96: output -> Q8_0
    assert tensor_type("blk.0.attn_q.weight", 48, "q4_k_m", 2, False) == Q.F16  # not even 32-blocks


@pytest.fixture(scope="module")
def ckpt_256(tmp_path_factory):
    """hidden 256 (K-quants fit) with ffn 640 (they do not: fallbacks), 8 layers (use_more_bits picks some), GQA."""
    root = tmp_path_factory.mktemp("kq")
    return write_tiny_checkpoint(root / "ckpt", layers=8, hidden=256, heads=4, kv_heads=2, intermediate=640,
                                 vocab=600, tied=True, dtype="bfloat16", seed=11)


@pytest.fixture(scope="module")
def files(ckpt_256, tmp_path_factory):
    """type -> (our GGUF, llama.cpp's GGUF quantized from our f16 file)."""
    root = tmp_path_factory.mktemp("kqfiles")
    f16 = Path(export_gguf(ckpt_256, root / "f16.gguf", "f16")["output"])
    made = {}

    def get(type_):
        if type_ not in made:
            ours = Path(export_gguf(ckpt_256, root / f"ours-{type_}.gguf", type_)["output"])
            theirs = root / f"llama-{type_}.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.nthread = LLAMA_FTYPES[type_], 1
            assert llama_cpp.llama_model_quantize(str(f16).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
            made[type_] = ours, theirs
        return made[type_]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("type_", ["q4_k_m", "q5_k_m", "q6_k", "q4_0"])
def test_file_equals_llama_quantize(type_, files):
    ours, theirs = (GGUFReader(p) for p in files(type_))
    assert ours.fields["general.file_type"].contents() == LLAMA_FTYPES[type_]
    by_name = {t.name: t for t in theirs.tensors}  # llama-quantize writes them in its own order
    assert sorted(by_name) == sorted(t.name for t in ours.tensors)
    blocks = same = 0
    for a in ours.tensors:
        b = by_name[a.name]
        assert a.tensor_type == b.tensor_type, a.name
        size = gguf.GGML_QUANT_SIZES[a.tensor_type][1]
        x, y = np.asarray(a.data).reshape(-1, size), np.asarray(b.data).reshape(-1, size)
        blocks += len(x)
        same += int((x == y).all(1).sum())
    kinds = {t.tensor_type for t in ours.tensors}
    if type_ == "q4_k_m":
        assert kinds == {Q.F32, Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0}  # ffn_down 640 falls back
    assert same / blocks >= 0.999, f"{blocks - same} of {blocks} blocks differ"


def _text(n=60):
    return "\n".join(_corpus(3, n))


@pytest.mark.slow
@pytest.mark.parametrize("type_", ["q4_k_m", "q6_k"])
def test_runs_in_llama_cpp_like_the_reference(type_, ckpt_256, files):
    """llama.cpp's logits on our file vs the float64 numpy MiniCPM on the weights gguf-py dequantizes from it."""
    path = files(type_)[0]
    config, _ = read_hf_checkpoint(ckpt_256)
    ref_model = ReferenceMiniCPM(config, dequantized_hf_weights(path, 4, 2))
    ids = [1] + list(range(5, 60))
    ref = ref_model.logits(ids)
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)], np.float64)
    finally:
        llm.close()
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 5e-2  # llama.cpp quantizes activations to 8 bits


@pytest.mark.slow
@pytest.mark.parametrize("type_", ["q4_k_m", "q5_k_m"])
def test_kl_within_5_percent_of_llama_cpp(type_, ckpt_256, files):
    ours, theirs = files(type_)
    r = evaluate(ckpt_256, _text(), gguf=[ours, theirs], context=64, max_windows=4, threads=2)
    a, b = r["artifacts"]
    assert a["kl_mean"] > 0 and abs(a["kl_mean"] / b["kl_mean"] - 1) <= 0.05
    assert abs(a["top1_agreement"] - b["top1_agreement"]) <= 0.02
