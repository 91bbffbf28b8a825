"""`mcpm-mobile export-onnx`: graph checks, onnxruntime against the numpy reference, onnxruntime-genai greedy.

The numpy reference (``reference_numpy.py``) gets HF-named float weights dequantized from the ONNX
initializers with every muP fold undone, so ONNX and reference compute with the same weights.
"""
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import run_cli
from mcpm_mobile.formats import onnx_export
from mcpm_mobile.formats.onnx_export import export_onnx
from mcpm_mobile.formats.onnx_weights import ALIGN, dequantize_blocks, quantize_blocks, unpack_codes
from mcpm_mobile.model import checkpoint
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.quantize.group import quantize_rows, unpack
from reference_numpy import ReferenceMiniCPM

PROMPT = [1, 45, 300, 17, 99, 250, 3, 130]
DECODE_STEPS = 9


@pytest.fixture(scope="session")
def onnx_dir(tiny_dir, tmp_path_factory):
    """Return a function: (variant, block_size, accuracy_level) -> exported directory (made once)."""
    root = tmp_path_factory.mktemp("onnx")
    made = {}

    def get(name="gqa_untied", block_size=32, accuracy_level=1):
        key = (name, block_size, accuracy_level)
        if key not in made:
            made[key] = export_onnx(tiny_dir(name), root / f"{name}-b{block_size}-a{accuracy_level}",
                                    block_size, accuracy_level)["output"]
        return made[key]

    return get


def _load(out_dir):
    model = onnx.load(f"{out_dir}/model.onnx", load_external_data=False)
    tensors = {t.name: numpy_helper.to_array(t, base_dir=str(out_dir)) for t in model.graph.initializer}
    meta = json.loads({p.key: p.value for p in model.metadata_props}[onnx_export.METADATA_KEY])
    return model, tensors, meta


def _hf_weights(out_dir, cfg):
    """HF-named float64 weights exactly as the graph uses them, folds undone."""
    _, t, meta = _load(out_dir)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]

    def dq(prefix, k, divide_by=1.0, suffix=""):
        codes = t[prefix + ".qweight"]
        return dequantize_blocks(codes, t[prefix + ".scales" + suffix].reshape(codes.shape[0], -1), k) / divide_by

    w = {"model.norm.weight": t["model.norm.weight"],
         "model.embed_tokens.weight": dq("model.embed_tokens", h, meta["scale_emb"])}
    if meta["tie_word_embeddings"]:
        w["lm_head.weight"] = dq("model.embed_tokens", h, 1 / meta["logit_scale"], "_lm_head")
    else:
        w["lm_head.weight"] = dq("lm_head", h, 1 / meta["logit_scale"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = dq(p + "self_attn.qkv_proj", h)
        w.update({p + "self_attn.q_proj.weight": qkv[:h], p + "self_attn.k_proj.weight": qkv[h:h + kv],
                  p + "self_attn.v_proj.weight": qkv[h + kv:],
                  p + "self_attn.o_proj.weight": dq(p + "self_attn.o_proj", h, meta["residual_scale"]),
                  p + "mlp.gate_proj.weight": dq(p + "mlp.gate_proj", h),
                  p + "mlp.up_proj.weight": dq(p + "mlp.up_proj", h),
                  p + "mlp.down_proj.weight": dq(p + "mlp.down_proj", inter, meta["residual_scale"])})
        for n in ("input_layernorm", "post_attention_layernorm"):
            w[p + n + ".weight"] = t[p + n + ".weight"]
    return w


class OrtDecoder:
    """Our own decode loop over the graph's KV inputs/outputs (past and present in separate buffers)."""

    def __init__(self, out_dir, cfg):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.session = ort.InferenceSession(f"{out_dir}/model.onnx", so, providers=["CPUExecutionProvider"])
        self.layers = cfg["num_hidden_layers"]
        d = cfg["hidden_size"] // cfg["num_attention_heads"]
        self.past = {f"past_key_values.{i}.{t}": np.zeros((1, cfg["num_key_value_heads"], 0, d), np.float32)
                     for i in range(self.layers) for t in ("key", "value")}
        self.length = 0

    def step(self, ids):
        """Feed ``ids``; returns float32 logits [len(ids), vocab]."""
        self.length += len(ids)
        outs = self.session.run(None, {"input_ids": np.array([ids], np.int64),
                                       "attention_mask": np.ones((1, self.length), np.int64), **self.past})
        names = [o.name for o in self.session.get_outputs()]
        self.past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], outs[1:])}
        return outs[0][0]


def _config(tiny_dir, name):
    return json.loads((tiny_dir(name) / "config.json").read_text())


def test_graph_ops_external_data_and_full_check(onnx_dir):
    out = onnx_dir("gqa_untied")
    onnx.checker.check_model(f"{out}/model.onnx", full_check=True)
    model, tensors, meta = _load(out)
    ops = {(n.domain or "", n.op_type) for n in model.graph.node}
    assert {("com.microsoft", op) for op in ("MatMulNBits", "GroupQueryAttention", "GatherBlockQuantized",
                                              "SkipSimplifiedLayerNormalization")} <= ops
    assert {d for d, _ in ops} == {"", "com.microsoft"}
    assert {o.domain: o.version for o in model.opset_import} == {"": 17, "com.microsoft": 1}
    assert sum(op == "MatMulNBits" for _, op in ((n.domain, n.op_type) for n in model.graph.node)) == 2 * 5 + 1
    gqa = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gqa.attribute}
    assert attrs["do_rotary"] == 1 and attrs["rotary_interleaved"] == 0 and attrs["kv_num_heads"] == 2
    big = [t for t in model.graph.initializer if not t.name.startswith("/model/constants/")]
    for t in big:
        info = {e.key: e.value for e in t.external_data}
        assert t.data_location == onnx.TensorProto.EXTERNAL and info["location"] == "model.onnx.data"
        assert int(info["offset"]) % ALIGN == 0
    assert [i.name for i in model.graph.input][:4] == ["input_ids", "attention_mask", "past_key_values.0.key",
                                                       "past_key_values.0.value"]
    assert [o.name for o in model.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    assert meta["block_size"] == 32 and meta["accuracy_level"] == 1


def test_int4_is_mlc_group_math_with_folds_in_scales(onnx_dir, tiny_dir):
    ckpt = Checkpoint(tiny_dir("mha_tied"))
    c = ckpt.config
    _, t, _ = _load(onnx_dir("mha_tied"))
    # q|k|v rows, unscaled: codes are MLC's codes + 1 (zero point 8), scales are MLC's float32 scales
    qkv = np.concatenate([ckpt.get(f"model.layers.1.self_attn.{p}_proj.weight") for p in "qkv"])
    mlc_q, mlc_s = quantize_rows(qkv, "float32")
    assert np.array_equal(unpack_codes(t["model.layers.1.self_attn.qkv_proj.qweight"]), unpack(mlc_q) + 1)
    assert np.array_equal(t["model.layers.1.self_attn.qkv_proj.scales"], mlc_s)
    # residual scale folded into o_proj/down_proj scales, codes untouched
    down = ckpt.get("model.layers.0.mlp.down_proj.weight")
    codes, scales = quantize_blocks(down, 32)
    assert np.array_equal(t["model.layers.0.mlp.down_proj.qweight"], codes)
    assert np.array_equal(t["model.layers.0.mlp.down_proj.scales"],
                          (scales.astype(np.float64) * c.residual_scale).astype(np.float32))
    # tied: one code tensor, input scales x scale_emb, output scales / logit scale; no lm_head codes
    codes, scales = quantize_blocks(ckpt.get("model.embed_tokens.weight"), 32)
    assert np.array_equal(t["model.embed_tokens.qweight"], codes) and "lm_head.qweight" not in t
    assert np.array_equal(t["model.embed_tokens.scales"][:, :, 0],
                          (scales.astype(np.float64) * c.scale_emb).astype(np.float32))
    assert np.array_equal(t["model.embed_tokens.scales_lm_head"],
                          (scales.astype(np.float64) / c.logit_scale).astype(np.float32))


def test_quantize_blocks_edge_cases():
    w = np.zeros((2, 40), np.float32)
    w[1, :3] = [1.0, -0.5, 0.25]
    codes, scales = quantize_blocks(w, 16)  # K=40: last block padded with zeros
    assert codes.shape == (2, 3, 8) and scales.shape == (2, 3)
    assert (unpack_codes(codes)[0] == 8).all() and (scales[0] == 0).all()
    back = dequantize_blocks(codes, scales, 40)
    assert back.shape == (2, 40) and np.abs(back - w).max() <= 1 / 7 / 2 + 1e-7


@pytest.mark.parametrize("stored", ["BF16", "F16", "F32"])
def test_compiled_codes_equal_numpy(stored):
    """export-onnx's compiled path (MLC's group kernel, codes + 1) against quantize_blocks, byte for byte."""
    pytest.importorskip("tvm")
    import ml_dtypes

    from mcpm_mobile.formats.onnx_weights import quantize_stored

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((33, 160)) * 0.04).astype(np.float32)
    w[2, :32] = 0
    w[4, 32:64] = np.arange(32) / 2  # .5 ties
    w[6, :32] = 1e-30
    rows = {"BF16": w.astype(ml_dtypes.bfloat16), "F16": w.astype(np.float16), "F32": w}[stored]
    codes, scales = quantize_stored(rows, stored, 32)
    ref_codes, ref_scales = quantize_blocks(rows.astype(np.float32), 32)
    assert codes.dtype == np.uint8 and codes.shape == ref_codes.shape == (33, 5, 16)
    assert np.array_equal(codes, ref_codes) and np.array_equal(scales, ref_scales)
    assert quantize_stored(rows, stored, 16) is None  # other blocks: numpy
    bad = rows.copy()
    bad[3, 7] = np.nan
    assert quantize_stored(bad, stored, 32) is None  # numpy reports it


@pytest.mark.parametrize("variant,block", [("mha_tied", 32), ("gqa_untied", 32), ("gqa_tied_f32", 16),
                                           ("mha_untied_sharded", 64)])
def test_onnxruntime_matches_numpy_reference(variant, block, onnx_dir, tiny_dir):
    """Prompt, then greedy decode steps through the KV inputs/outputs; every logit row checked."""
    cfg = _config(tiny_dir, variant)
    out = onnx_dir(variant, block)
    ref = ReferenceMiniCPM(cfg, _hf_weights(out, cfg))
    dec = OrtDecoder(out, cfg)
    ids, feed = list(PROMPT), list(PROMPT)
    for _ in range(1 + DECODE_STEPS):
        got = dec.step(feed)
        want = ref.logits(ids)[-len(feed):]
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
        assert np.array_equal(got.argmax(-1), want.argmax(-1))
        feed = [int(got[-1].argmax())]
        ids += feed


def test_int8_accuracy_level_stays_close(onnx_dir, tiny_dir):
    """The default accuracy level 4 (int8 activations) is not bit-faithful but close."""
    cfg = _config(tiny_dir, "gqa_tied_f32")
    model, _, _ = _load(onnx_dir("gqa_tied_f32", 32, 4))
    levels = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
              if a.name == "accuracy_level"}
    assert levels == {4}
    got = OrtDecoder(onnx_dir("gqa_tied_f32", 32, 4), cfg).step(PROMPT)
    want = OrtDecoder(onnx_dir("gqa_tied_f32", 32, 1), cfg).step(PROMPT)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def _genai_greedy(out, prompt, n, **search):
    """Greedy tokens of onnxruntime-genai on the exported directory; ``search``: more search options."""
    import onnxruntime_genai as og

    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + n, **search)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(prompt, np.int32))
    tokens = []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    return tokens


def _greedy_ort(out, cfg, prompt, n):
    dec, feed, tokens = OrtDecoder(out, cfg), list(prompt), []
    while len(tokens) < n:
        nxt = int(dec.step(feed)[-1].argmax())
        tokens.append(nxt)
        if nxt == cfg["eos_token_id"]:
            break
        feed = [nxt]
    return tokens


@pytest.mark.parametrize("variant", ["gqa_untied", "mha_untied_sharded", "gqa_tied_f32"])
def test_onnxruntime_genai_greedy_matches(variant, onnx_dir, tiny_dir):
    """onnxruntime-genai loads the directory as written; its tokenizer and greedy tokens equal ours."""
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    out, cfg, n = onnx_dir(variant), _config(tiny_dir, variant), 12
    model = og.Model(str(out))
    tok = og.Tokenizer(model)
    tok.update_options(add_special_tokens="true")
    text = "the model runs on a phone 2048 你好"
    prompt = [int(i) for i in tok.encode(text)]
    assert prompt == Tokenizer.from_file(f"{out}/tokenizer.json").encode(text).ids
    tokens = _genai_greedy(out, prompt, n)
    assert tokens == _greedy_ort(out, cfg, prompt, n)
    ref = ReferenceMiniCPM(cfg, _hf_weights(out, cfg))
    assert tokens == ref.greedy(prompt, len(tokens))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gqa_untied", "mha_untied_sharded"])
def test_onnxruntime_genai_greedy_matches_host_engine(variant, onnx_dir, quantized_dir, tmp_path):
    """Same prompt, same greedy tokens: onnxruntime-genai on the ONNX export and our TVM host engine on
    q4f32_1 weights (the same INT4 values for block 32; the muP scalings in the graph instead of folded)."""
    from mcpm_mobile.compiler.compile import compile_model
    from mcpm_mobile.runtime.engine import Engine

    weights = quantized_dir(variant, "q4f32_1")
    compile_model(weights, "host", tmp_path / "lib.so")
    engine = Engine(weights, tmp_path / "lib.so")
    prompt = [engine.weights.config.bos_token_id] + engine.encode("the model runs on a phone 2048 你好")
    eos = engine.weights.config.eos_token_ids
    host = engine.generate(prompt_ids=prompt, max_tokens=16, temperature=0, repetition_penalty=1.0,
                           stop_token_ids=eos, stop_strings=[]).token_ids
    tokens = _genai_greedy(onnx_dir(variant), prompt, 16)
    assert (tokens[:-1] if tokens[-1] in eos else tokens) == host


def test_directory_contents_and_genai_config(onnx_dir, tiny_dir):
    out = onnx_dir("gqa_untied")
    names = sorted(p.name for p in Path(out).iterdir() if p.name != ".mcpm-mobile")
    assert names == ["genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer.model",
                     "tokenizer_config.json"]
    g = json.loads((tiny_dir("gqa_untied") / "generation_config.json").read_text())
    cfg = json.loads(open(f"{out}/genai_config.json").read())
    assert cfg["model"]["type"] == "llama" and cfg["model"]["decoder"]["num_key_value_heads"] == 2
    assert cfg["search"]["max_length"] == 512 and cfg["search"]["past_present_share_buffer"] is True
    assert cfg["search"]["temperature"] == g["temperature"] and cfg["search"]["do_sample"] is True


def test_cli_export_and_errors(tiny_dir, tmp_path):
    out = tmp_path / "onnx"
    r = run_cli("export-onnx", tiny_dir("gqa_untied"), "-o", out, "--json", "--block-size", "64",
                "--context-window", "128")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["block_size"] == 64 and s["accuracy_level"] == 4 and s["max_length"] == 128
    assert json.loads((out / "genai_config.json").read_text())["search"]["max_length"] == 128
    for args, message in [((), "not empty (use --force"), (("--block-size", "24"), "--block-size: 24"),
                          (("--accuracy-level", "5"), "--accuracy-level: 5"),
                          (("--context-window", "9999"), "--context-window: 9999")]:
        r = run_cli("export-onnx", tiny_dir("gqa_untied"), "-o", out, *args)
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = run_cli("export-onnx", tmp_path / "missing", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "no such directory" in r.output
    assert not (tmp_path / "x").exists()


def test_export_streams_with_bounded_memory(tiny_dir, tmp_path, monkeypatch):
    """Row chunks bound what is held: the peak stays far below the float32 weights."""
    src = tiny_dir("gqa_tied_f32")
    total_f32 = sum(int(np.prod(i.shape)) * 4 for i in Checkpoint(src).tensors.values())
    monkeypatch.setattr(checkpoint, "ROW_CHUNK_BYTES", 16 << 10)
    tracemalloc.start()
    try:
        export_onnx(src, tmp_path / "o", accuracy_level=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < total_f32 / 4, (peak, total_f32)


def test_tokenizer_config_written_when_missing(tiny_dir, tmp_path):
    """onnxruntime-genai cannot open a tokenizer without tokenizer_config.json; the export supplies one."""
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir("gqa_untied"), src)
    (src / "tokenizer_config.json").unlink()
    s = export_onnx(src, tmp_path / "onnx")
    assert "tokenizer_config.json" in s["tokenizer_files"]
    tok = og.Tokenizer(og.Model(str(tmp_path / "onnx")))
    tok.update_options(add_special_tokens="true")
    text = "<用户>你好 the phone 128<AI>"
    assert [int(i) for i in tok.encode(text)] == Tokenizer.from_file(str(src / "tokenizer.json")).encode(text).ids
