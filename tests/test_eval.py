"""`mcpm-mobile eval`: KL divergence, top-1 agreement and perplexity against values computed by hand.

The float side is checked against the independent float64 numpy MiniCPM; the quantized side is recomputed here
by running llama.cpp on the same windows and applying the definitions with explicit Python arithmetic.
Random tiny models make perplexity meaningless, but KL divergence and agreement are well defined on them.
"""
import json
import math
import shutil

import llama_cpp
import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import edit_json, run_cli
from host_fixtures import host_lib  # noqa: F401 - fixture
from mcpm_mobile.eval.evaluate import evaluate, make_windows
from mcpm_mobile.eval.float_model import FloatModel
from mcpm_mobile.eval.metrics import Scores, kl_divergence, log_softmax
from mcpm_mobile.formats.gguf_export import export_gguf
from mcpm_mobile.formats.onnx_export import export_onnx
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.tiny import _corpus
from reference_numpy import ReferenceMiniCPM, read_hf_checkpoint

CONTEXT = 32


def hand_log_softmax(row):
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row))
    return [v - m - z for v in row]


def hand_kl(base_row, row):
    lp, lq = hand_log_softmax(base_row), hand_log_softmax(row)
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))


def argmax(row):
    return max(range(len(row)), key=lambda i: (row[i], -i))


def test_metrics_by_hand():
    base = [[0.0, 1.0, 2.0], [3.0, 1.0, 0.0], [0.5, 0.5, -1.0]]
    quant = [[0.0, 2.0, 1.0], [2.5, 1.2, 0.1], [0.4, 0.6, -1.0]]
    targets = [2, 0, 1]
    s = Scores()
    s.add(log_softmax(np.array(quant)), np.array(targets), log_softmax(np.array(base)))
    kl = [hand_kl(b, q) for b, q in zip(base, quant)]
    nll = [-hand_log_softmax(q)[t] for q, t in zip(quant, targets)]
    got = s.summary()
    assert got["tokens_scored"] == 3
    assert math.isclose(got["kl_mean"], sum(kl) / 3, rel_tol=1e-12)
    assert math.isclose(got["kl_max"], max(kl), rel_tol=1e-12)
    ks = sorted(kl)  # linear interpolation between the 2nd and 3rd of 3 values at the 99th percentile
    assert math.isclose(got["kl_p99"], ks[1] + 0.98 * (ks[2] - ks[1]), rel_tol=1e-12)
    assert math.isclose(got["kl_median"], ks[1], rel_tol=1e-12)
    assert got["top1_agreement"] == pytest.approx(1 / 3)  # rows 1 and 3 pick another token (row 3: a tie -> 0 vs 1)
    assert math.isclose(got["perplexity"], math.exp(sum(nll) / 3), rel_tol=1e-12)
    assert kl_divergence(log_softmax(np.array(base)), log_softmax(np.array(base))).max() < 1e-15


def test_windows():
    w = make_windows(list(range(10, 80)), 8, 1, None, "t")
    assert w.shape == (10, 8) and w[0].tolist() == [1, 10, 11, 12, 13, 14, 15, 16] and w[9, 1] == 10 + 63
    assert make_windows(list(range(70)), 8, 1, 3, "t").shape == (3, 8)
    with pytest.raises(Exception, match="t: has 6 tokens, fewer than one evaluation window needs"):
        make_windows(list(range(6)), 8, 1, None, "t")


@pytest.mark.parametrize("variant", ["mha_tied", "gqa_untied", "gqa_tied_f32", "longrope_equal_mha",
                                     "longrope_larger_gqa"])
def test_float_model_matches_reference(variant, tiny_dir):
    src = tiny_dir(variant)
    config, weights = read_hf_checkpoint(src)
    ref = ReferenceMiniCPM(config, weights)
    windows = np.array([[1] + list(range(5, 5 + CONTEXT - 1)), [1] + list(range(40, 40 + CONTEXT - 1))])
    got = FloatModel(Checkpoint(src)).logits(windows, CONTEXT // 2)
    for w, window in enumerate(windows):
        want = ref.logits(window.tolist())[CONTEXT // 2:CONTEXT - 1]
        assert np.abs(got[w] - want).max() / np.abs(want).max() < 1e-5


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(_corpus(21, 120)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ggufs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalgguf")
    src = tiny_dir("gqa_tied_f32")
    return {t: export_gguf(src, root / f"{t}.gguf", t)["output"] for t in ("f32", "q4_0", "q4_k_m", "q8_0")}


def hand_evaluation(src, text, gguf_path, windows_n):
    """Everything eval reports for one GGUF, recomputed: float64 reference, llama.cpp run here, Python sums."""
    config, weights = read_hf_checkpoint(src)
    ref = ReferenceMiniCPM(config, weights)
    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    first = CONTEXT // 2
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=CONTEXT, n_batch=CONTEXT, n_ubatch=CONTEXT, logits_all=True,
                          n_threads=2, verbose=False)
    kl, agree, nll, nll_float = [], [], [], []
    try:
        for k in range(windows_n):
            window = [1] + ids[k * (CONTEXT - 1):(k + 1) * (CONTEXT - 1)]
            base = ref.logits(window)
            llm.reset()
            llm.eval(window)
            for p in range(first, CONTEXT - 1):
                b, q = base[p].tolist(), [float(v) for v in llm.scores[p]]
                kl.append(hand_kl(b, q))
                agree.append(argmax(b) == argmax(q))
                nll.append(-hand_log_softmax(q)[window[p + 1]])
                nll_float.append(-hand_log_softmax(b)[window[p + 1]])
    finally:
        llm.close()
    return {"kl_mean": sum(kl) / len(kl), "kl_max": max(kl), "top1_agreement": sum(agree) / len(agree),
            "perplexity": math.exp(sum(nll) / len(nll)), "float_perplexity": math.exp(sum(nll_float) / len(nll)),
            "tokens_scored": len(kl)}


@pytest.mark.slow
@pytest.mark.parametrize("type_", ["q4_0", "q4_k_m"])
def test_gguf_against_hand_computation(type_, tiny_dir, ggufs, text_file):
    src = tiny_dir("gqa_tied_f32")
    text = text_file.read_text(encoding="utf-8")
    r = evaluate(src, text, gguf=[ggufs[type_]], context=CONTEXT, max_windows=3, threads=2)
    want = hand_evaluation(src, text, ggufs[type_], 3)
    got = r["artifacts"][0]
    assert r["windows"] == 3 and got["tokens_scored"] == want["tokens_scored"] == 3 * (CONTEXT - 1 - CONTEXT // 2)
    assert want["kl_mean"] > 1e-4  # a real difference to measure
    assert got["kl_mean"] == pytest.approx(want["kl_mean"], rel=1e-3, abs=1e-7)
    assert got["kl_max"] == pytest.approx(want["kl_max"], rel=1e-3, abs=1e-7)
    assert got["top1_agreement"] == want["top1_agreement"]
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
    assert r["float"]["perplexity"] == pytest.approx(want["float_perplexity"], rel=1e-5)
    assert got["tokens_per_s"] > 0 and got["kind"] == f"GGUF {type_} in llama.cpp"


@pytest.mark.slow
def test_more_bits_cost_less(tiny_dir, ggufs, text_file):
    r = evaluate(tiny_dir("gqa_tied_f32"), text_file.read_text(encoding="utf-8"),
                 gguf=[ggufs[t] for t in ("f32", "q8_0", "q4_k_m", "q4_0")], context=CONTEXT, max_windows=3, threads=2)
    kl = [a["kl_mean"] for a in r["artifacts"]]
    assert kl[0] < 1e-5 and r["artifacts"][0]["top1_agreement"] == 1.0  # f32 in llama.cpp: the float model
    assert kl[0] < kl[1] < kl[2] < kl[3]
    assert all(a["kl_p99"] >= a["kl_median"] for a in r["artifacts"])


@pytest.mark.slow
def test_mlc_and_onnx(host_lib, tiny_dir, text_file, tmp_path):
    """q0f32 in TVM is the float model; ONNX INT4 (block 32) holds exactly q4f32_1's dequantized weights."""
    src = tiny_dir("mha_tied")
    onnx_dir = tmp_path / "onnx"
    export_onnx(src, onnx_dir)
    r = evaluate(src, text_file.read_text(encoding="utf-8"), mlc=[host_lib("mha_tied", "q0f32"),
                 host_lib("mha_tied", "q4f32_1")], onnx=[onnx_dir], context=CONTEXT, max_windows=2, threads=2)
    q0, q4, onnx = r["artifacts"]
    assert q0["kind"] == "MLC q0f32, TVM host library" and onnx["kind"].startswith("ONNX INT4")
    assert q0["kl_mean"] < 1e-8 and q0["top1_agreement"] == 1.0
    assert q0["perplexity"] == pytest.approx(r["float"]["perplexity"], rel=1e-5)
    assert q4["kl_mean"] > 1e-5 and onnx["kl_mean"] == pytest.approx(q4["kl_mean"], rel=0.02)


def test_cli_table_and_json(tiny_dir, tmp_path, text_file):
    src = tiny_dir("mha_tied")
    gguf = export_gguf(src, tmp_path / "q8.gguf", "q8_0")["output"]
    r = run_cli("eval", src, "--text", text_file, "--gguf", gguf, "--context", CONTEXT, "--windows", 1,
                "--threads", 1, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["context"] == CONTEXT and data["windows"] == 1 and data["float"]["label"] == "float"
    a = data["artifacts"][0]
    assert set(a) >= {"label", "kind", "path", "perplexity", "kl_mean", "kl_p99", "top1_agreement", "tokens_per_s"}
    r = run_cli("eval", src, "--text", text_file, "--gguf", gguf, "--context", CONTEXT, "--windows", 1)
    assert r.exit_code == 0 and "gguf:q8.gguf" in r.stdout and "KL p99" in r.stdout


def test_longrope_checkpoint_against_llamacpp(tiny_dir, tmp_path, text_file):
    """A LongRoPE checkpoint (MiniCPM4/4.1's scaling) evaluates: float32 GGUF in llama.cpp vs our float model
    agree to float rounding, so the float model applies the same factors and amplitude."""
    src = tiny_dir("longrope_larger_gqa")
    gguf = export_gguf(src, tmp_path / "f32.gguf", "f32")["output"]
    r = run_cli("eval", src, "--text", text_file, "--gguf", gguf, "--context", CONTEXT, "--windows", 2,
                "--threads", 1, "--json")
    assert r.exit_code == 0, r.output
    a = json.loads(r.stdout)["artifacts"][0]
    assert a["kl_mean"] < 1e-6 and a["top1_agreement"] == 1.0, a


def _one_line_error(r, *parts):
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for p in parts:
        assert p in line, line


def test_cli_errors(tiny_dir, tmp_path, text_file):
    src = tiny_dir("mha_tied")
    short = tmp_path / "short.txt"
    short.write_text("a few words", encoding="utf-8")
    _one_line_error(run_cli("eval", src, "--text", short, "--context", CONTEXT), str(short),
                    "fewer than one evaluation window needs")
    _one_line_error(run_cli("eval", src, "--text", tmp_path / "none.txt"), "none.txt", "not found")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    _one_line_error(run_cli("eval", src, "--text", binary), "not UTF-8")
    _one_line_error(run_cli("eval", src, "--text", text_file, "--gguf", tmp_path / "x.gguf"), "x.gguf", "not found")
    other_vocab = export_gguf(tiny_dir("gqa_tied_f32"), tmp_path / "v640.gguf", "q8_0")["output"]
    _one_line_error(run_cli("eval", src, "--text", text_file, "--gguf", other_vocab, "--context", CONTEXT),
                    "v640.gguf", "vocabulary of 640 tokens, the checkpoint 512")
    other_tok = export_gguf(tiny_dir("gqa_untied"), tmp_path / "othertok.gguf", "q8_0")["output"]  # 512, other pieces
    _one_line_error(run_cli("eval", src, "--text", text_file, "--gguf", other_tok, "--context", CONTEXT),
                    "othertok.gguf", "tokenizes the text differently from the checkpoint")
    _one_line_error(run_cli("eval", src, "--text", text_file, "--context", 100000), "--context", "between 8 and")


def test_unsupported_rope_scaling_refused(tiny_dir, tmp_path, text_file):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir("mha_tied"), src)
    edit_json(src / "config.json", rope_scaling={"type": "linear", "factor": 2.0})
    r = run_cli("eval", src, "--text", text_file, "--context", CONTEXT)
    assert r.exit_code == 2 and "rope_scaling" in r.output
