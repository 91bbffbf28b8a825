"""`mcpm-mobile export-gguf` and the LLMFarm settings: readback of every key and tensor, flavors, bad inputs."""
import json
import math
import re
import shutil

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from gguf import GGUFReader

from conftest import edit_json, run_cli
from gguf_weights import hf_rows, tensor_array
from mcpm_mobile.formats import cli as formats_cli, gguf_export
from mcpm_mobile.formats.gguf_export import export_gguf, llama_permute, llama_unpermute
from mcpm_mobile.model import checkpoint
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.tiny import USER_PIECES
from mcpm_mobile.formats import llmfarm

Q = gguf.GGMLQuantizationType
VARIANTS = ["mha_tied", "gqa_untied", "gqa_tied_f32", "mha_untied_sharded"]
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}


def _expected_kv(src, type_):
    cfg = json.loads((src / "config.json").read_text())
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    n, h, heads, layers = cfg["vocab_size"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    def token_type(i):
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        return 4 if pieces[i] in USER_PIECES else 1

    a = "minicpm"
    return {
        "general.architecture": a, "general.name": cfg["_name_or_path"],
        "general.file_type": FILE_TYPES[type_], "general.quantization_version": 2,
        f"{a}.vocab_size": n, f"{a}.context_length": cfg["max_position_embeddings"], f"{a}.embedding_length": h,
        f"{a}.block_count": layers, f"{a}.feed_forward_length": cfg["intermediate_size"],
        f"{a}.attention.head_count": heads, f"{a}.attention.head_count_kv": cfg["num_key_value_heads"],
        f"{a}.rope.dimension_count": h // heads, f"{a}.rope.freq_base": np.float32(cfg["rope_theta"]),
        f"{a}.attention.layer_norm_rms_epsilon": np.float32(cfg["rms_norm_eps"]),
        f"{a}.embedding_scale": np.float32(cfg["scale_emb"]),
        f"{a}.residual_scale": np.float32(cfg["scale_depth"] / math.sqrt(layers)),
        f"{a}.logit_scale": np.float32(h / cfg["dim_model_base"]),
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": pieces + [f"[PAD{i}]" for i in range(len(pieces), n)],
        "tokenizer.ggml.scores": [np.float32(sp.get_score(i)) for i in range(len(pieces))]
                                 + [-10000.0] * (n - len(pieces)),
        "tokenizer.ggml.token_type": [token_type(i) for i in range(len(pieces))] + [5] * (n - len(pieces)),
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True, "tokenizer.chat_template": tok_cfg["chat_template"],
    }


def _expected_tensors(src, type_):
    """{gguf name: (HF name, GGML type, rope heads)} per llama-quantize's policy, with q6_k -> q8_0."""
    cfg = json.loads((src / "config.json").read_text())
    tied = "lm_head.weight" not in Checkpoint(src).tensors
    weight = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[type_]
    better = Q.Q8_0 if type_ == "q4_0" else weight
    out = {"token_embd.weight": ("model.embed_tokens.weight", better if tied else weight, 0),
           "output_norm.weight": ("model.norm.weight", Q.F32, 0)}
    if not tied:
        out["output.weight"] = ("lm_head.weight", better, 0)
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    for i in range(cfg["num_hidden_layers"]):
        for g, hf in names.items():
            out[f"blk.{i}.{g}.weight"] = (f"model.layers.{i}.{hf}.weight", Q.F32 if "norm" in g else weight,
                                          heads.get(g, 0))
    return out


def _field_value(field):
    v = field.contents()
    if field.types[-1] == gguf.GGUFValueType.FLOAT32:
        return [np.float32(x) for x in v] if isinstance(v, list) else np.float32(v)
    return v


@pytest.mark.parametrize("type_", ["f32", "f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_readback_every_key_and_tensor(variant, type_, tiny_dir, tmp_path):
    src = tiny_dir(variant)
    path = tmp_path / "m.gguf"
    s = export_gguf(src, path, type_)
    r = GGUFReader(path)
    kv = {k: _field_value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    expected = _expected_kv(src, type_)
    assert set(kv) == set(expected)
    for key, value in expected.items():
        assert kv[key] == value, key
    ckpt = Checkpoint(src)
    plan = _expected_tensors(src, type_)
    assert [t.name for t in r.tensors] == [t.name for t in gguf_export.tensor_plan(ckpt.config, type_)]
    assert {t.name for t in r.tensors} == set(plan)
    for t in r.tensors:
        hf, qtype, heads = plan[t.name]
        w = ckpt.get(hf)
        assert t.tensor_type == qtype, t.name
        assert tuple(int(n) for n in t.shape) == tuple(reversed(w.shape)), t.name
        if heads:
            w = w[np.argsort(hf_rows(w.shape[0], heads))]  # HF row order -> llama.cpp's
        if qtype in (Q.F32, Q.F16):
            exact = w.astype(np.float16 if qtype == Q.F16 else np.float32).astype(np.float32)
            assert np.array_equal(tensor_array(t), exact), t.name
        else:
            assert t.data.tobytes() == gguf.quants.quantize(w, qtype).tobytes(), t.name
    assert s["bytes"] == path.stat().st_size and s["tensors"] == len(plan)
    assert s["tensor_types"] == _type_counts(plan)


def _type_counts(plan):
    names = {Q.F32: "f32", Q.F16: "f16", Q.Q8_0: "q8_0", Q.Q4_0: "q4_0"}
    counts = {}
    for _, qtype, _ in plan.values():
        counts[names[qtype]] = counts.get(names[qtype], 0) + 1
    return counts


def test_chunked_streaming_writes_the_same_bytes(tiny_dir, tmp_path, monkeypatch):
    src = tiny_dir("gqa_untied")
    export_gguf(src, tmp_path / "a.gguf", "q4_0")
    monkeypatch.setattr(checkpoint, "ROW_CHUNK_BYTES", 4 * 64 * 7)  # 7 rows at a time
    export_gguf(src, tmp_path / "b.gguf", "q4_0")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_permute_is_llama_cpp_rope_order():
    w = np.arange(2 * 8 * 3).reshape(16, 3)
    assert np.array_equal(llama_permute(w, 2), w[np.argsort(hf_rows(16, 2))])
    assert np.array_equal(llama_unpermute(llama_permute(w, 2), 2), w)
    assert llama_permute(w, 2)[:4, 0].tolist() == [0, 12, 3, 15]  # head 0: x0, x4, x1, x5 (d = 8)


def test_cli_choices_match_library():
    assert formats_cli.GGUF_TYPES == tuple(gguf_export.TYPES)
    assert formats_cli.GGUF_FLAVORS == tuple(gguf_export.FLAVOR_ARCH)


def test_cli_json_and_llmfarm_settings(tiny_dir, tmp_path):
    out = tmp_path / "tiny-q8.gguf"
    r = run_cli("export-gguf", tiny_dir("mha_tied"), "-o", out, "--type", "q8_0", "--llmfarm", tmp_path / "docs",
                "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["type"] == "q8_0" and s["arch"] == "minicpm" and s["bytes"] == out.stat().st_size and s["seconds"] >= 0
    chat = json.loads((tmp_path / "docs" / "chats" / "MiniCPM.json").read_text(encoding="utf-8"))
    assert chat["model"] == "tiny-q8.gguf" and chat["context"] == 512  # capped at max_position_embeddings
    assert s["llmfarm"] == [str(tmp_path / "docs" / d / "MiniCPM.json") for d in ("chats", "model_setting_templates")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "tiny-q8.gguf"]


# --- OpenBMB's LLMFarm fork ------------------------------------------------------------------------

def _two_b_scalings(layers, hidden):
    """Config values whose scalings equal MiniCPM-2B's: 12, 1.4/sqrt(40), hidden/dim_model_base = 9."""
    return dict(scale_emb=12, scale_depth=1.4 * math.sqrt(layers / 40), dim_model_base=hidden / 9)


def _copy(tiny_dir, variant, dst, **config):
    shutil.copytree(tiny_dir(variant), dst)
    edit_json(dst / "config.json", **config)
    return dst


def test_openbmb_flavor_is_arch_llama_without_scale_keys(tiny_dir, tmp_path):
    src = _copy(tiny_dir, "gqa_tied_f32", tmp_path / "ckpt", **_two_b_scalings(3, 128))
    s = export_gguf(src, tmp_path / "o.gguf", "q4_0", flavor="openbmb")
    r = GGUFReader(tmp_path / "o.gguf")
    assert s["arch"] == "llama" and r.fields["general.architecture"].contents() == "llama"
    assert r.fields["llama.block_count"].contents() == 3
    assert r.fields["llama.attention.layer_norm_rms_epsilon"].contents() == np.float32(1e-5)
    assert not [k for k in r.fields if k.startswith("minicpm.") or k.endswith("_scale")]
    assert "output.weight" not in {t.name for t in r.tensors}
    assert {t.name: t.tensor_type for t in r.tensors}["token_embd.weight"] == Q.Q8_0


@pytest.mark.parametrize("variant, config, expect", [
    ("mha_tied", {}, "this checkpoint has residual_scale 0.989949 (needs 0.221359), logit_scale 4 (needs 9); "
                     "use --flavor minicpm"),
    ("gqa_tied_f32", {**_two_b_scalings(3, 128), "scale_emb": 10}, "has scale_emb 10 (needs 12);"),
    ("gqa_untied", _two_b_scalings(2, 64), "has untied lm_head"),
])
def test_openbmb_refuses_other_configs(tiny_dir, tmp_path, variant, config, expect):
    src = _copy(tiny_dir, variant, tmp_path / "ckpt", **config)
    r = run_cli("export-gguf", src, "-o", tmp_path / "x.gguf", "--flavor", "openbmb")
    _assert_one_line_error(r, expect)
    assert "OpenBMB's LLMFarm fork hard-codes MiniCPM-2B's scalings" in r.output
    assert not (tmp_path / "x.gguf").exists()


# --- bad inputs: one line, exit 2, nothing left behind ---------------------------------------------

def _assert_one_line_error(r, expect):
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert expect in lines[0], lines[0]


def test_bad_inputs(tiny_dir, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir("mha_tied"), src)
    out = tmp_path / "o.gguf"
    _assert_one_line_error(run_cli("export-gguf", tmp_path / "nope", "-o", out), "no such directory")
    _assert_one_line_error(run_cli("export-gguf", src, "-o", tmp_path / "o.bin"), "must end in .gguf")
    _assert_one_line_error(run_cli("export-gguf", src, "-o", tmp_path), "must end in .gguf")
    out.write_text("keep")
    _assert_one_line_error(run_cli("export-gguf", src, "-o", out), "exists (use --force")
    assert out.read_text() == "keep"
    _assert_one_line_error(run_cli("export-gguf", src, "-o", out, "--force"), "--force will not replace it")
    assert out.read_text() == "keep"  # --force replaces only a GGUF
    out.write_bytes(b"GGUF" + bytes(60))
    assert run_cli("export-gguf", src, "-o", out, "--force", "--quiet").exit_code == 0
    assert out.read_bytes()[:4] == b"GGUF"
    out.unlink()
    (src / "tokenizer.model").unlink()
    _assert_one_line_error(run_cli("export-gguf", src, "-o", out), "no tokenizer.model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_block_size_and_head_dim_errors(tmp_path):
    from mcpm_mobile.model.tiny import write_tiny_checkpoint

    src = write_tiny_checkpoint(tmp_path / "h48", layers=1, hidden=48, heads=4, intermediate=64, vocab=400)
    _assert_one_line_error(run_cli("export-gguf", src, "-o", tmp_path / "a.gguf"),
                           "hidden_size 48 is not a multiple of 32, the q4_0 block size; use --type f16 or f32")
    assert run_cli("export-gguf", src, "-o", tmp_path / "a.gguf", "--type", "f16").exit_code == 0
    src = write_tiny_checkpoint(tmp_path / "h36", layers=1, hidden=36, heads=4, intermediate=64, vocab=400)
    _assert_one_line_error(run_cli("export-gguf", src, "-o", tmp_path / "b.gguf", "--type", "f32"),
                           "head_dim 9 is odd")


# --- LLMFarm settings ------------------------------------------------------------------------------

def _config():
    return MiniCPMConfig.from_dict({"architectures": ["MiniCPMForCausalLM"], "vocab_size": 122753,
                                    "hidden_size": 2304, "num_hidden_layers": 40, "num_attention_heads": 36,
                                    "intermediate_size": 5760, "max_position_embeddings": 4096})


def test_llmfarm_settings_layout_and_types(tmp_path):
    paths = llmfarm.write_settings(tmp_path, "minicpm-2b-q4_0.gguf", _config(), context=2048)
    assert paths == [tmp_path / "chats" / "MiniCPM.json", tmp_path / "model_setting_templates" / "MiniCPM.json"]
    chat, template = (json.loads(p.read_text(encoding="utf-8")) for p in paths)
    assert chat["model"] == "minicpm-2b-q4_0.gguf" and chat["model_inference"] == "llama"
    assert chat["prompt_format"] == "<用户>{{prompt}}<AI>" and chat["reverse_prompt"] == "<用户>"
    assert chat["use_metal"] is True and chat["context"] == 2048 and chat["n_batch"] == 512
    assert chat["add_bos_token"] is True and chat["parse_special_tokens"] is True
    assert chat["model_settings_template"] == template["template_name"] == "MiniCPM"
    chat_only = {"lora_adapters", "model", "clip_model", "title", "icon", "model_settings_template", "chat_style"}
    assert set(template) == (set(chat) - chat_only) | {"template_name"}
    for key in ("context", "n_batch", "n_predict", "numberOfThreads", "top_k", "repeat_last_n", "mirostat"):
        assert type(chat[key]) is int, key  # LLMFarm reads these with `as! Int32`
    for key in ("temp", "top_p", "repeat_penalty", "tfs_z", "typical_p", "mirostat_tau", "mirostat_eta"):
        assert type(chat[key]) is float, key


def test_llmfarm_floats_are_float32_exact(tmp_path):
    paths = llmfarm.write_settings(tmp_path, "m.gguf", _config(), sampling={"temp": 0.3, "top_p": 0.8})
    for p in paths:
        text = p.read_text(encoding="utf-8")
        floats = [v for v in json.loads(text).values() if type(v) is float]
        assert len(floats) == 7
        for v in floats:  # parsed back as a double, it must be a float32 value (what Swift's `as! Float` needs)
            assert float(np.float32(v)) == v, v
    chat = json.loads(paths[0].read_text(encoding="utf-8"))
    assert chat["temp"] == float(np.float32(0.3)) and chat["top_p"] == float(np.float32(0.8)) != 0.8
    assert chat["repeat_penalty"] == float(np.float32(1.02))


@pytest.mark.parametrize("kwargs, expect", [
    (dict(model_file_name="dir/m.gguf"), "bare .gguf file name"),
    (dict(model_file_name="m.bin"), "bare .gguf file name"),
    (dict(context=8192), "8192 is outside 16..4096"),
    (dict(name="../x"), "plain file name"),
    (dict(sampling={"temperature": 1}), "unknown key(s) temperature"),
    (dict(sampling={"top_k": 2.5}), "must be an integer"),
    (dict(sampling={"temp": "hot"}), "must be a finite number"),
])
def test_llmfarm_bad_settings(tmp_path, kwargs, expect):
    from mcpm_mobile.errors import MCPMError

    args = dict(model_file_name="m.gguf", config=_config())
    args.update(kwargs)
    with pytest.raises(MCPMError, match=re.escape(expect)):
        llmfarm.write_settings(tmp_path, **args)
    assert not list(tmp_path.iterdir())
