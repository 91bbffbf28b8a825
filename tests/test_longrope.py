"""LongRoPE (MiniCPM4/4.1's rope_scaling) in every engine against the numpy reference, in both configurations:

* ``longrope_equal_mha``: max_position_embeddings == original (as MiniCPM4/4.1 ship): the short factors (1 to 100)
  apply at every position, amplitude 1;
* ``longrope_larger_gqa``: max_position_embeddings 4x the original: the long factors (2 to 20) apply at every
  position, with amplitude sqrt(1 + ln 4 / ln 128).

Each test also checks that the factors change the logits well beyond its tolerance, so it cannot pass with
plain RoPE or with the other factor set.
"""
from __future__ import annotations

import json
import math
import shutil

import gguf
import numpy as np
import pytest
from gguf import GGUFReader

from conftest import edit_json, run_cli
from host_fixtures import host_lib, rel_err  # noqa: F401 - fixture
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.formats.gguf_export import export_gguf
from mcpm_mobile.formats.onnx_export import export_onnx
from mcpm_mobile.model import rope
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.tiny import tiny_config
from reference_numpy import ReferenceMiniCPM, read_hf_checkpoint

VARIANTS = ["longrope_equal_mha", "longrope_larger_gqa"]
IDS = [1, 45, 300, 17, 99, 250, 3, 130, 77, 401, 12, 360, 58, 222, 9, 480, 31, 150, 271, 64]


def _cfg(tiny_dir, name):
    return json.loads((tiny_dir(name) / "config.json").read_text())


def _variants_of(config: dict) -> dict[str, dict]:
    """The same model with other RoPE: plain, and the factor set the reference does not use."""
    rs = config["rope_scaling"]
    other = "short_factor" if config["max_position_embeddings"] > rs["original_max_position_embeddings"] \
        else "long_factor"
    plain = {k: v for k, v in config.items() if k != "rope_scaling"}
    swapped = dict(config, max_position_embeddings=rs["original_max_position_embeddings"],
                   rope_scaling=dict(rs, short_factor=rs[other], long_factor=rs[other]))
    return {"plain RoPE": plain, f"the {other}s": swapped}


def _assert_matches_only_longrope(got, config, weights, ids, tol, rows=slice(None), guard=True):
    """``got`` (logit rows of ``ids``) equals the reference within ``tol`` and is far from the alternatives."""
    want = ReferenceMiniCPM(config, weights).logits(ids)[rows]
    assert rel_err(got, want) <= tol, f"relative error {rel_err(got, want):.2e}"
    # argmax equal up to near-ties: the engine's choice is within its row's error of the reference maximum
    got = np.asarray(got, np.float64)
    rows_ = np.arange(len(want))
    assert (want[rows_, got.argmax(-1)] >= want.max(-1) - 2 * np.abs(got - want).max(-1)).all()
    for what, alt in (_variants_of(config) if guard else {}).items():
        other = ReferenceMiniCPM(alt, weights).logits(ids)[rows]
        assert rel_err(other, want) > 20 * tol, f"{what} gives nearly the same logits: the test cannot tell"


# --- configuration --------------------------------------------------------------------------------------------
BAD = [
    ({"rope_type": "dynamic", "factor": 2.0}, "type 'dynamic' is not supported"),
    ({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}, "type 'yarn' is not supported"),
    ({"rope_type": "longrope", "long_factor": [1.0] * 8, "original_max_position_embeddings": 128},
     "short_factor must be a list of 8"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 9,
      "original_max_position_embeddings": 128}, "long_factor has 9 values; head_dim 16 needs 8"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 7 + [0.0], "long_factor": [1.0] * 8,
      "original_max_position_embeddings": 128}, r"short_factor\[7\] is 0.0; factors must be positive"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 7 + [float("inf")],
      "original_max_position_embeddings": 128}, r"long_factor\[7\] is inf"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": ["x"] * 8,
      "original_max_position_embeddings": 128}, r"long_factor\[0\] is x"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8},
     "original_max_position_embeddings must be an integer > 1"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
      "original_max_position_embeddings": 4096}, "max_position_embeddings 512 is below"),
    ([1, 2], "rope_scaling must be an object"),
]


@pytest.mark.parametrize("rope_scaling,message", BAD)
def test_bad_rope_scaling_is_one_short_line(rope_scaling, message):
    cfg = dict(tiny_config(), rope_scaling=rope_scaling)
    with pytest.raises(MCPMError, match=message) as e:
        MiniCPMConfig.from_dict(cfg, "ckpt/config.json")
    text = str(e.value)
    assert text.startswith("ckpt/config.json: ") and "\n" not in text and len(text) < 260


def test_release_sized_refusal_does_not_dump_factors():
    """MiniCPM4-8B-shaped factors (64 of them) with an unsupported type: the error stays short."""
    cfg = dict(tiny_config(hidden=128 * 4, heads=4), rope_scaling={
        "rope_type": "su", "long_factor": list(np.geomspace(1, 124, 64)),
        "short_factor": list(np.geomspace(1, 124, 64)), "original_max_position_embeddings": 32768})
    with pytest.raises(MCPMError) as e:
        MiniCPMConfig.from_dict(cfg)
    assert len(str(e.value)) < 200 and "1.0" not in str(e.value)


def test_config_round_trip_and_type_alias():
    raw = tiny_config(rope_scaling="longrope", original_max_position=128)
    rs = raw["rope_scaling"]
    old_style = dict(raw, rope_scaling={"type": "longrope", **{k: v for k, v in rs.items() if k != "rope_type"}})
    for cfg in (MiniCPMConfig.from_dict(raw), MiniCPMConfig.from_dict(old_style)):
        assert cfg.rope_scaling == rs
        again = MiniCPMConfig.from_dict({**cfg.to_dict(), "architectures": ["MiniCPMForCausalLM"]})
        assert again.rope_scaling == rs and again.longrope == cfg.longrope
    lr = MiniCPMConfig.from_dict(raw).longrope
    assert lr.uses_long and np.array_equal(lr.factors, rs["long_factor"])
    assert lr.amplitude == pytest.approx(math.sqrt(1 + math.log(4) / math.log(128)))
    equal = MiniCPMConfig.from_dict(tiny_config(rope_scaling="longrope")).longrope
    assert not equal.uses_long and equal.amplitude == 1.0 and np.array_equal(equal.factors, rs["short_factor"])
    assert MiniCPMConfig.from_dict(tiny_config()).longrope is None
    assert MiniCPMConfig.from_dict(dict(tiny_config(), rope_scaling={"rope_type": "default"})).longrope is None


def test_tiny_checkpoint_cli_options(tmp_path):
    r = run_cli("dev", "tiny-checkpoint", tmp_path / "a", "--rope-scaling", "longrope", "--max-position", "256",
                "--original-max-position", "64", "--kv-heads", "2", "--vocab", "400")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 256 and cfg["num_key_value_heads"] == 2
    rs = cfg["rope_scaling"]
    assert list(rs) == ["rope_type", "short_factor", "long_factor", "original_max_position_embeddings"]
    assert rs["original_max_position_embeddings"] == 64 and len(rs["short_factor"]) == 8
    assert rs["short_factor"][0] == 1.0 and rs["short_factor"][-1] == 100.0 and rs["long_factor"][-1] == 20.0
    r = run_cli("dev", "tiny-checkpoint", tmp_path / "b", "--original-max-position", "64")
    assert r.exit_code == 2 and "needs --rope-scaling" in r.output and not (tmp_path / "b").exists()
    r = run_cli("dev", "tiny-checkpoint", tmp_path / "c", "--rope-scaling", "longrope", "--original-max-position",
                "1024")
    assert r.exit_code == 2 and "exceeds --max-position" in r.output


def test_our_tables_equal_the_reference_tables(tiny_dir):
    """mcpm_mobile.model.rope (used by the ONNX export) against the numpy reference's own OpenBMB-style table."""
    for name in VARIANTS:
        config, weights = read_hf_checkpoint(tiny_dir(name))
        c = MiniCPMConfig.from_dict(config)
        cos, sin = rope.cos_sin(c.max_position_embeddings, c.head_dim, c.rope_theta, c.longrope)
        ref_cos, ref_sin = ReferenceMiniCPM(config, weights).rope_table(c.max_position_embeddings)
        half = c.head_dim // 2
        assert np.allclose(cos, ref_cos[:, :half], atol=1e-12) and np.allclose(sin, ref_sin[:, :half], atol=1e-12)
        assert np.allclose(np.abs(cos[3]) ** 2 + np.abs(sin[3]) ** 2, c.longrope.amplitude ** 2)


# --- llama.cpp ----------------------------------------------------------------------------------------------------
def _llama_logits(path, ids, n_ctx):
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=2, verbose=False, logits_all=True,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], np.float64)
    finally:
        llm.close()


@pytest.mark.parametrize("name", VARIANTS)
def test_gguf_rope_metadata_and_factor_tensors(name, tiny_dir, tmp_path):
    src = tiny_dir(name)
    rs, cfg = _cfg(tiny_dir, name)["rope_scaling"], _cfg(tiny_dir, name)
    path = export_gguf(src, tmp_path / "m.gguf", "q4_0")["output"]
    r = GGUFReader(path)
    kv = {f.name: f.contents() for f in r.fields.values()}
    larger = cfg["max_position_embeddings"] > rs["original_max_position_embeddings"]
    assert kv["minicpm.rope.scaling.type"] == "longrope"
    assert kv["minicpm.rope.scaling.original_context_length"] == rs["original_max_position_embeddings"]
    amp = math.sqrt(1 + math.log(cfg["max_position_embeddings"] / rs["original_max_position_embeddings"])
                    / math.log(rs["original_max_position_embeddings"]))
    assert kv["minicpm.rope.scaling.attn_factor"] == pytest.approx(amp, rel=1e-6)
    t = {x.name: x for x in r.tensors}
    assert t["rope_factors_long.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(np.asarray(t["rope_factors_long.weight"].data), np.float32(rs["long_factor"]))
    short = rs["long_factor"] if larger else rs["short_factor"]
    assert np.array_equal(np.asarray(t["rope_factors_short.weight"].data), np.float32(short))


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_llamacpp_matches_reference(name, tiny_dir, tmp_path):
    """f32 GGUF in llama.cpp at two context sizes: 128 and 512 (equal config: llama.cpp takes the short tensor
    at both), 128 and 256 (larger config: the short tensor at 128, the long one at 256, both hold the long
    factors). Same logits as the reference either way."""
    src = tiny_dir(name)
    path = export_gguf(src, tmp_path / "m.gguf", "f32")["output"]
    config, weights = read_hf_checkpoint(src)
    orig = config["rope_scaling"]["original_max_position_embeddings"]
    for n_ctx in (min(orig, 128), 256 if orig < 256 else orig):
        got = _llama_logits(path, IDS, n_ctx)
        _assert_matches_only_longrope(got, config, weights, IDS, 1e-5)


@pytest.mark.slow
def test_openbmb_flavor_refuses_longrope(tiny_dir, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir("longrope_equal_mha"), src)
    edit_json(src / "config.json", scale_emb=12, scale_depth=1.4 * (2 / 40) ** 0.5, dim_model_base=64 / 9)
    with pytest.raises(MCPMError, match="LongRoPE rope_scaling"):
        export_gguf(src, tmp_path / "o.gguf", "f32", flavor="openbmb")
    assert not (tmp_path / "o.gguf").exists()


# --- onnxruntime --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_onnxruntime_matches_reference(name, tiny_dir, tmp_path):
    from test_onnx import OrtDecoder, _hf_weights

    cfg = _cfg(tiny_dir, name)
    out = export_onnx(tiny_dir(name), tmp_path / "onnx", 32, 1)["output"]
    weights = _hf_weights(out, cfg)
    dec = OrtDecoder(out, cfg)
    got = [dec.step(IDS[:12])] + [dec.step([t]) for t in IDS[12:]]
    _assert_matches_only_longrope(np.concatenate(got), cfg, weights, IDS, 1e-3)


@pytest.mark.parametrize("name", VARIANTS)
def test_onnxruntime_genai_greedy_matches_reference(name, tiny_dir, tmp_path):
    """onnxruntime-genai runs the exported directory as it is (its config carries no RoPE settings): greedy
    tokens equal the reference's (repetition penalty off: genai applies generation_config's 1.02 otherwise)."""
    from test_onnx import _genai_greedy, _hf_weights

    cfg = _cfg(tiny_dir, name)
    out = export_onnx(tiny_dir(name), tmp_path / "onnx", 32, 1)["output"]
    tokens = _genai_greedy(out, IDS, 12, repetition_penalty=1.0)
    assert len(tokens) >= 4
    assert tokens == ReferenceMiniCPM(cfg, _hf_weights(out, cfg)).greedy(IDS, len(tokens))


# --- TVM host library ---------------------------------------------------------------------------------------------
def test_library_for_other_rope_is_refused(quantized_dir, tmp_path):
    """A library records rope_scaling: plain weights with a LongRoPE library, and the reverse, are refused in one
    line that does not print the factors (checked on _metadata alone: no compile needed)."""
    from mcpm_mobile.formats.weights import LIBRARY_CONFIG_KEYS, Weights

    longrope_w = Weights.read(quantized_dir("longrope_equal_mha", "q4f32_1"))
    plain_w = Weights.read(quantized_dir("mha_tied", "q4f32_1"))
    for weights, other in ((longrope_w, plain_w), (plain_w, longrope_w)):
        recorded = {k: getattr(weights.config, k) for k in LIBRARY_CONFIG_KEYS}
        meta = {"model_type": weights.model_type, "quantization": "q4f32_1", "params": [],
                "mcpm": {"model_config": dict(recorded, rope_scaling=other.config.rope_scaling)}}
        with pytest.raises(MCPMError, match="rope_scaling differs") as e:
            weights.check_library(meta, tmp_path / "lib.so")
        assert "\n" not in str(e.value) and "1.0" not in str(e.value)
        meta["mcpm"]["model_config"] = recorded
        weights.check_library(meta, tmp_path / "lib.so")  # the same model: accepted


@pytest.mark.slow
@pytest.mark.parametrize("name,quantization", [("longrope_equal_mha", "q4f32_1"), ("longrope_larger_gqa", "q4f32_1"),
                                               ("longrope_larger_gqa", "q4f16_1")])
def test_host_library_matches_reference(name, quantization, host_lib):
    """Prefill then decode. For the larger configuration the prefill (140 tokens) is longer than the original
    context, where TVM's kernel switches factor halves by call length: both halves hold the same factors."""
    from mlc_weights import dequantized_hf_weights
    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib(name, quantization)
    config, hf = dequantized_hf_weights(weights)
    orig = config["rope_scaling"]["original_max_position_embeddings"]
    n = orig + 12 if orig < 256 else 20
    ids = [int(x) for x in np.random.default_rng(4).integers(3, config["vocab_size"], n + 4)]
    engine = Engine(weights, lib)
    engine.reset()
    got = [engine.prefill(ids[:n])] + [engine.decode(t) for t in ids[n:]]
    f32 = quantization == "q4f32_1"  # float16 activations: 2e-2 as in test_compile_host; the f32 cases guard
    _assert_matches_only_longrope(np.stack(got), config, hf, ids, 1e-4 if f32 else 2e-2, rows=slice(n - 1, None),
                                  guard=f32)


@pytest.mark.slow
def test_android_longrope_kernels_on_pocl(quantized_dir, tmp_path):
    """The phone library's rotary kernels (every shape variant), run on PoCL, against numpy."""
    import tvm
    from tvm.tirx.buffer import is_buffer_var

    import opencl_check as oc
    from mcpm_mobile.compiler.compile import lower, write_library
    from mcpm_mobile.compiler.library import device_sources
    from mcpm_mobile.formats.weights import Weights

    weights = quantized_dir("longrope_larger_gqa", "q4f32_1")
    low = lower(weights, "android")
    write_library(low, tmp_path / "lib.tar", True)
    from mcpm_mobile.compiler import runtime_compat

    formats = runtime_compat.read_formats(tmp_path / "lib.tar")  # `inspect` names the builtin LongRoPE needs
    assert runtime_compat.QUERY_POSITIONS in formats["builtins"]
    assert "query_positions" in {r["key"] for r in runtime_compat.compatibility(formats)["requires"]}
    src = device_sources(tmp_path / "lib.tar")
    c = Weights.read(weights).config
    inv = rope.inv_freq(c.head_dim, c.rope_theta, c.longrope).astype(np.float32)
    funcs = {gv.name_hint: f for gv, f in low.mod.functions_items() if gv.name_hint.startswith("longrope")}
    assert funcs
    for name, func in funcs.items():
        x_b, pos_b, inv_b, out_b = [p for p in func.params if is_buffer_var(p)]
        rows = 37
        sizes = {str(d.name): rows for d in x_b.shape if not isinstance(d, tvm.tirx.IntImm)}
        n, heads, d = [sizes.get(str(getattr(e, "name", "")), None) or int(e) for e in x_b.shape]
        rng = np.random.default_rng(n)
        x = rng.standard_normal((n, heads, d)).astype(np.float32)
        pos = rng.integers(0, c.max_position_embeddings, n).astype(np.int32)
        half = d // 2
        ang = pos[:, None].astype(np.float64) * inv.astype(np.float64)[None, :]
        cos, sin = np.cos(ang)[:, None, :] * c.longrope.amplitude, np.sin(ang)[:, None, :] * c.longrope.amplitude
        x1, x2 = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
        want = x.astype(np.float64).copy()
        rot = c.num_attention_heads + c.num_key_value_heads
        want[:, :rot] = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)[:, :rot]
        kernels = oc.launches(func, low.target)
        assert kernels and all(k in src for k in kernels)
        for kernel, (grid, block) in kernels.items():
            got = oc.run(src[kernel], kernel, {str(x_b.name): x, str(pos_b.name): pos, str(inv_b.name): inv,
                                               str(out_b.name): np.zeros_like(x)},
                         sizes, oc.evaluate(grid, sizes), oc.evaluate(block, sizes))[str(out_b.name)]
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), f"{name}/{kernel}"
