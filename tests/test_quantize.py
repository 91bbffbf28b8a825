"""`mcpm-mobile quantize` end to end: MLC format, TVM's loader, variants and every bad input."""
import json
import shutil

import numpy as np
import pytest

from conftest import edit_json, run_cli
from mcpm_mobile.support import safetensors_io
from mcpm_mobile.formats.tensor_cache import load_tensors
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.quantize.group import dequantize_rows, quantize_rows


def _hf(ckpt_dir, name):
    return Checkpoint(ckpt_dir).get(name)


@pytest.mark.parametrize("variant", ["mha_tied", "gqa_untied", "gqa_tied_f32", "mha_untied_sharded"])
def test_quantize_variants_match_direct_quantization(variant, tiny_dir, quantized_dir):
    src, out = tiny_dir(variant), quantized_dir(variant, "q4f16_1")
    cfg = json.loads((src / "config.json").read_text())
    t = load_tensors(out)
    hf = lambda n: _hf(src, n)  # noqa: E731
    # fused qkv = rows of q, k, v quantized one after another
    qkv = np.concatenate([hf(f"model.layers.1.self_attn.{p}_proj.weight") for p in "qkv"])
    q, s = quantize_rows(qkv, "float16")
    assert np.array_equal(t["model.layers.1.self_attn.wqkv_pack.q_weight"], q)
    assert np.array_equal(t["model.layers.1.self_attn.wqkv_pack.q_scale"], s)
    gate_up = np.concatenate([hf("model.layers.0.mlp.gate_proj.weight"), hf("model.layers.0.mlp.up_proj.weight")])
    assert t["model.layers.0.mlp.gate_up_proj.q_weight"].shape == (2 * cfg["intermediate_size"], cfg["hidden_size"] // 8)
    assert np.array_equal(t["model.layers.0.mlp.gate_up_proj.q_weight"], quantize_rows(gate_up, "float16")[0])
    assert t["model.norm.weight"].dtype == np.float16
    assert np.array_equal(t["model.norm.weight"], hf("model.norm.weight").astype(np.float16))
    tied = cfg.get("tie_word_embeddings", "lm_head.weight" not in Checkpoint(src).tensors)
    assert ("lm_head.q_weight" in t) == (not tied)
    dq = dequantize_rows(t["model.embed_tokens.q_weight"], t["model.embed_tokens.q_scale"]).astype(np.float32)
    emb = hf("model.embed_tokens.weight")
    assert np.abs(dq - emb).max() <= np.abs(emb).max() / 7 * 0.51 + 1e-3


def test_q4f16_0_is_transposed_nk(quantized_dir):
    nk, kn = load_tensors(quantized_dir("gqa_untied", "q4f16_1")), load_tensors(quantized_dir("gqa_untied", "q4f16_0"))
    for p in ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "lm_head"]:
        assert np.array_equal(kn[p + ".q_weight"], nk[p + ".q_weight"].T)
        assert np.array_equal(kn[p + ".q_scale"], nk[p + ".q_scale"].T)
    assert np.array_equal(kn["model.embed_tokens.q_weight"], nk["model.embed_tokens.q_weight"])


def test_q4f32_1_and_q0f16(quantized_dir, tiny_dir):
    t32 = load_tensors(quantized_dir("mha_tied", "q4f32_1"))
    assert t32["model.layers.0.self_attn.o_proj.q_scale"].dtype == np.float32
    w = _hf(tiny_dir("mha_tied"), "model.layers.0.self_attn.o_proj.weight")
    assert np.array_equal(t32["model.layers.0.self_attn.o_proj.q_scale"], quantize_rows(w, "float32")[1])
    t0 = load_tensors(quantized_dir("mha_tied", "q0f16"))
    assert np.array_equal(t0["model.layers.0.self_attn.o_proj.weight"], w.astype(np.float16))
    assert "model.layers.0.self_attn.wqkv_pack.weight" in t0


def test_tvm_loader_reads_what_we_wrote(quantized_dir):
    import tvm

    out = quantized_dir("gqa_untied", "q4f16_1")
    ours = load_tensors(out)
    tvm.get_global_func("vm.builtin.tensor_cache.clear")()
    tvm.get_global_func("vm.builtin.tensor_cache.load")(str(out), 1, 0)
    get = tvm.get_global_func("vm.builtin.tensor_cache.get")
    for name, arr in ours.items():
        got = get(name).numpy()
        assert got.shape == arr.shape and got.dtype == arr.dtype, name
        assert got.tobytes() == arr.tobytes(), name
    tvm.get_global_func("vm.builtin.tensor_cache.clear")()


def test_tensor_cache_sharding_matches_tvmjs(tmp_path):
    """Our writer shards exactly as TVM's own dump_tensor_cache does."""
    from tvm.contrib import tvmjs

    from mcpm_mobile.formats.tensor_cache import TensorCacheWriter

    rng = np.random.default_rng(0)
    sizes = [100, 600, 300, 700, 450, 20, 999, 1000, 10, 480, 520]
    arrays = {f"t{i}": rng.integers(0, 255, n).astype(np.uint8) for i, n in enumerate(sizes)}
    ours = TensorCacheWriter(tmp_path / "ours", shard_cap=1 << 20)
    (tmp_path / "ours").mkdir()
    for name, a in arrays.items():
        ours.add(name, np.repeat(a, 1024))
    ours_index = ours.finish()
    tvmjs.dump_tensor_cache({n: np.repeat(a, 1024) for n, a in arrays.items()}, str(tmp_path / "tvm"),
                            encode_format="raw", shard_cap_mb=1, show_progress=False)
    theirs = json.loads((tmp_path / "tvm" / "tensor-cache.json").read_text())["records"]

    def layout(records):
        return [(s["dataPath"], s["nbytes"], s["md5sum"], [(r["name"], r["byteOffset"], r["nbytes"]) for r in s["records"]])
                for s in records]

    assert layout(ours_index["records"]) == layout(theirs)
    assert len(theirs) > 3


def test_tensor_cache_schema(quantized_dir):
    real = json.loads((quantized_dir() / "tensor-cache.json").read_text())
    shard = real["records"][0]
    assert shard["format"] == "raw-shard" and len(shard["md5sum"]) == 32
    assert {"name", "shape", "dtype", "format", "nbytes", "byteOffset"} <= set(shard["records"][0])
    assert set(real["metadata"]) == {"ParamSize", "ParamBytes", "BitsPerParam"}


def test_chat_config_and_tokenizer(quantized_dir, tiny_dir):
    out = quantized_dir()
    cfg = json.loads((out / "mlc-chat-config.json").read_text())
    for key in ["model_type", "quantization", "model_config", "vocab_size", "context_window_size", "prefill_chunk_size",
                "conv_template", "tokenizer_files", "tokenizer_info", "temperature", "top_p"]:
        assert key in cfg
    assert cfg["model_type"] == "minicpm" and cfg["quantization"] == "q4f16_1"
    assert cfg["temperature"] == 0.8 and cfg["repetition_penalty"] == 1.02  # from generation_config.json
    conv = cfg["conv_template"]
    assert conv["roles"] == {"user": "<用户>", "assistant": "<AI>"} and conv["system_prefix_token_ids"] == [1]
    assert cfg["tokenizer_info"] == {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": True,
                                     "strip_space_in_decode": True}
    assert "tokenizer.json" in cfg["tokenizer_files"] and (out / "tokenizer.json").is_file()


def test_tokenizer_json_created_from_sentencepiece_and_matches(tiny_dir, tmp_path):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir(), src)
    (src / "tokenizer.json").unlink()
    out = tmp_path / "q"
    assert run_cli("quantize", src, "-o", out, "--quiet").exit_code == 0
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in ["hello world", "the model runs on a phone 2048 tokens", "你好世界，今天天气很好", "mixed 混合 text ü 😀",
                 "  leading spaces", "Numbers 1234567"]:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def test_json_summary(tiny_dir, tmp_path):
    r = run_cli("quantize", tiny_dir(), "-o", tmp_path / "o", "--json")
    s = json.loads(r.output)
    assert r.exit_code == 0 and s["quantization"] == "q4f16_1" and s["shards"] >= 1
    assert 4.0 < s["bits_per_param"] < 5.0 and s["params"] > 0 and s["seconds"] >= 0


# --- bad inputs: one line, exit 2, nothing left behind ---------------------------------------------

def _bad(tmp_path, tiny_dir, mutate, expect, variant="mha_tied"):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir(variant), src)
    mutate(src)
    out = tmp_path / "out"
    r = run_cli("quantize", src, "-o", out)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert expect in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return lines[0]


def _rewrite(src, fn):
    path = src / "model.safetensors"
    info = safetensors_io.read_header(path)
    tensors = {n: np.array(safetensors_io.load(i)) for n, i in info.items()}
    fn(tensors)
    safetensors_io.write(path, tensors)


CASES = {
    "qwen2": (lambda s: edit_json(s / "config.json", architectures=["Qwen2ForCausalLM"], model_type="qwen2"), "Qwen2ForCausalLM"),
    "llama": (lambda s: edit_json(s / "config.json", architectures=["LlamaForCausalLM"], model_type="llama"), "LlamaForCausalLM"),
    "minicpm3": (lambda s: edit_json(s / "config.json", architectures=["MiniCPM3ForCausalLM"], model_type="minicpm3",
                                     kv_lora_rank=256), "MLA"),
    "minicpmv": (lambda s: edit_json(s / "config.json", architectures=["MiniCPMV"], model_type="minicpmv"), "vision"),
    "moe": (lambda s: edit_json(s / "config.json", num_experts=8, num_experts_per_tok=2), "MoE"),
    "missing": (lambda s: _rewrite(s, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    "misshaped": (lambda s: _rewrite(s, lambda t: t.update({"model.layers.0.self_attn.o_proj.weight":
                                                            t["model.layers.0.self_attn.o_proj.weight"][:, :32]})),
                  "'model.layers.0.self_attn.o_proj.weight' has shape [64, 32], expected [64, 64]"),
    "nan": (lambda s: _rewrite(s, lambda t: t["model.layers.1.mlp.down_proj.weight"].__setitem__((0, 3), np.nan)),
            "'model.layers.1.mlp.down_proj.weight' contains 1 NaN/Inf"),
    "inf": (lambda s: _rewrite(s, lambda t: t["model.norm.weight"].__setitem__(5, np.inf)), "NaN/Inf"),
    "truncated": (lambda s: (s / "model.safetensors").write_bytes((s / "model.safetensors").read_bytes()[:-1000]),
                  "truncated"),
    "corrupt_header": (lambda s: (s / "model.safetensors").write_bytes(b"\xff" * 64), "model.safetensors"),
    "no_weights_bin": (lambda s: ((s / "model.safetensors").rename(s / "pytorch_model.bin")), "not a torch.save zip"),
    "no_config": (lambda s: (s / "config.json").unlink(), "config.json not found"),
    "bad_json": (lambda s: (s / "config.json").write_text("{not json"), "config.json: cannot read JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, tiny_dir):
    mutate, expect = CASES[case]
    _bad(tmp_path, tiny_dir, mutate, expect)


def test_group_size_message(tmp_path, tiny_dir):
    src = tmp_path / "c"
    from mcpm_mobile.model.tiny import write_tiny_checkpoint
    write_tiny_checkpoint(src, hidden=48, heads=4, vocab=512)
    r = run_cli("quantize", src, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "hidden_size 48 is not divisible by the group size 32" in r.output
    assert run_cli("quantize", src, "-o", tmp_path / "o0", "--quantization", "q0f16").exit_code == 0


def test_nonexistent_and_nonempty_output(tmp_path, tiny_dir):
    r = run_cli("quantize", tmp_path / "nope", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "no such directory" in r.output
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = run_cli("quantize", tiny_dir(), "-o", out)
    assert r.exit_code == 2 and "not empty" in r.output and (out / "keep.txt").exists()
    r = run_cli("quantize", tiny_dir(), "-o", out, "--force", "--quiet")  # not ours: --force refuses
    assert r.exit_code == 2 and "not written by mcpm-mobile" in r.output and (out / "keep.txt").exists()
    ours = tmp_path / "ours"
    assert run_cli("quantize", tiny_dir(), "-o", ours, "--quiet").exit_code == 0
    (ours / "stale.txt").write_text("x")
    r = run_cli("quantize", tiny_dir(), "-o", ours, "--force", "--quiet")
    assert r.exit_code == 0 and not (ours / "stale.txt").exists() and (ours / "tensor-cache.json").exists()


def test_unreadable_file(tmp_path, tiny_dir):
    import os
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir(), src)
    (src / "model.safetensors").chmod(0)
    r = run_cli("quantize", src, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "model.safetensors" in r.output


def test_interrupted_run_leaves_nothing(tmp_path, tiny_dir, monkeypatch):
    from mcpm_mobile.quantize import convert

    calls = {"n": 0}
    real = convert._convert_param

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(convert, "_convert_param", boom)
    with pytest.raises(KeyboardInterrupt):
        convert.quantize_checkpoint(tiny_dir(), tmp_path / "o")
    assert list(tmp_path.iterdir()) == []
