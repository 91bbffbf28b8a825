"""Every MiniCPM release people download, as a tiny stand-in with its real config keys and file layout
(tests/standins.py, facts and sources in docs/checkpoints.md), through every command that takes a checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pytest
from gguf import GGUFReader

from conftest import run_cli
from standins import LONGROPE, standin_config, write_standin
from mcpm_mobile.model import chat_format
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.releases import RELEASES

NAMES = list(RELEASES)
CONVERSATION = [("user", "你好, what is 2+2?"), ("assistant", "4."), ("user", "and 3+3?")]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = write_standin(name, root, seed=NAMES.index(name))
        return made[name]

    return get


def render_prompt(chat_config: dict, messages) -> str:
    """The prompt MLC builds from ``conv_template`` (mlc-llm python/mlc_llm/protocol/conversation_protocol.py,
    ``Conversation.as_prompt``), ending with the assistant role and ``role_empty_sep``."""
    t = chat_config["conv_template"]
    seps = t["seps"] if len(t["seps"]) == 2 else t["seps"] * 2
    system = t["system_template"].replace("{system_message}", t["system_message"])
    text = system
    for i, (role, content) in enumerate(list(messages) + [("assistant", None)]):
        if content is None:
            text += t["roles"][role] + t["role_empty_sep"]
            continue
        prefix = "" if not t["add_role_after_system_message"] and system and i == 0 else \
            t["roles"][role] + t["role_content_sep"]
        text += prefix + t["role_templates"][role].replace("{" + role + "_message}", content) + seps[role == "assistant"]
    return text


def _checkpoint_render(model_dir: Path, messages, **kwargs) -> str:
    """The prompt as transformers' apply_chat_template renders the checkpoint's template (jinja2)."""
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    env = jinja2.Environment()
    return env.from_string(tok_config["chat_template"]).render(
        messages=[{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_standin_keeps_the_release_key_set_and_layout(name, standin):
    release, d = RELEASES[name], standin(name)
    cfg = json.loads((d / "config.json").read_text())
    want = set(release.config) - (set() if LONGROPE or not isinstance(release.config.get("rope_scaling"), dict)
                                  else {"rope_scaling"})
    assert set(cfg) == want
    for key, value in release.config.items():
        if key not in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                       "intermediate_size", "vocab_size", "eos_token_id", "rope_scaling"):
            assert cfg[key] == value, key
    ratio = lambda c: c["num_attention_heads"] // c["num_key_value_heads"]  # noqa: E731
    assert (ratio(cfg) == 1) == (ratio(release.config) == 1)
    ckpt = Checkpoint(d)
    assert ckpt.config.tie_word_embeddings == release.tied
    assert ckpt.files[0].suffix == (".bin" if release.weights[0].endswith(".bin") else ".safetensors")
    assert len(ckpt.files) == (1 if "*" not in release.weights[0] else int(release.weights[0].split("-of-")[1][:5]))


@pytest.mark.parametrize("name", NAMES)
def test_chat_format_matches_the_checkpoint_template(name, standin):
    d = standin(name)
    fmt = chat_format.detect(d, Checkpoint(d).config)
    assert fmt.name == RELEASES[name].chat
    cfg = json.loads((d / "config.json").read_text())
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    assert set(eos) <= set(fmt.stop_token_ids)
    if fmt.chatml:
        assert fmt.stop_token_ids[-1] == chat_format.token_id(d, "<|im_end|>") == fmt.eot_token_id == 3
    want = _checkpoint_render(d, CONVERSATION)
    assert fmt.render(CONVERSATION) == want
    mlc = {"conv_template": fmt.mlc_conv_template()}
    if fmt.chatml:  # MLC's prompt (as conversation_protocol.as_prompt builds it) equals the checkpoint's
        assert render_prompt(mlc, CONVERSATION) == want
    if fmt.thinking is not None:
        off = fmt.with_thinking(False)
        assert off.render(CONVERSATION) == _checkpoint_render(d, CONVERSATION, enable_thinking=False)
        assert render_prompt({"conv_template": off.mlc_conv_template()}, CONVERSATION) == off.render(CONVERSATION)
        assert fmt.render(CONVERSATION) == _checkpoint_render(d, CONVERSATION, enable_thinking=True)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_export_gguf_and_onnx(name, standin, tmp_path):
    d = standin(name)
    fmt = chat_format.detect(d, Checkpoint(d).config)
    r = run_cli("quantize", d, "-o", tmp_path / "w", "--quantization", "q4f16_1")
    assert r.exit_code == 0, r.output
    chat = json.loads((tmp_path / "w" / "mlc-chat-config.json").read_text(encoding="utf-8"))
    assert chat["conv_template"] == fmt.mlc_conv_template()
    assert chat["conv_template"]["stop_token_ids"] == list(fmt.stop_token_ids)

    r = run_cli("export-gguf", d, "-o", tmp_path / "m.gguf", "--llmfarm", tmp_path / "llmfarm")
    assert r.exit_code == 0, r.output
    fields = GGUFReader(tmp_path / "m.gguf").fields
    value = lambda key: fields[key].parts[fields[key].data[0]]  # noqa: E731
    eos = Checkpoint(d).config.eos_token_ids
    assert int(value("tokenizer.ggml.eos_token_id")[0]) == eos[0]
    if fmt.chatml:
        assert int(value("tokenizer.ggml.eot_token_id")[0]) == 3
    else:
        assert "tokenizer.ggml.eot_token_id" not in fields
    tok_config = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert bytes(value("tokenizer.chat_template")).decode() == tok_config["chat_template"]
    farm = json.loads(next((tmp_path / "llmfarm" / "chats").glob("*.json")).read_text(encoding="utf-8"))
    assert farm["prompt_format"].replace("{{prompt}}", "Q") == fmt.render([("user", "Q")])
    assert farm["reverse_prompt"] == ("<|im_end|>" if fmt.chatml else "<用户>")

    r = run_cli("export-onnx", d, "-o", tmp_path / "onnx")
    assert r.exit_code == 0, r.output
    genai = json.loads((tmp_path / "onnx" / "genai_config.json").read_text())
    ids = genai["model"]["eos_token_id"]
    assert (ids if isinstance(ids, list) else [ids]) == list(fmt.stop_token_ids)


def test_thinking_switch(standin, tmp_path):
    d = standin("MiniCPM4.1-8B")
    r = run_cli("quantize", d, "-o", tmp_path / "off", "--no-thinking")
    assert r.exit_code == 0, r.output
    conv = json.loads((tmp_path / "off" / "mlc-chat-config.json").read_text())["conv_template"]
    assert conv["role_empty_sep"] == "\n<think>\n\n</think>\n\n"
    assert chat_format.from_conv_template(conv).thinking is False
    assert chat_format.from_conv_template(conv, True).mlc_conv_template()["role_empty_sep"] == "\n"
    for other in ("MiniCPM4-0.5B", "MiniCPM-2B-sft-bf16"):
        r = run_cli("quantize", standin(other), "-o", tmp_path / other, "--thinking")
        assert r.exit_code == 2 and "no thinking mode" in r.output and len(r.output.strip().splitlines()) == 1
        assert not (tmp_path / other).exists()


@pytest.mark.parametrize("name,family,conflict", [
    ("MiniCPM-2B-sft-bf16", "minicpm", False), ("MiniCPM-1B-sft-bf16", "minicpm", True),
    ("MiniCPM4-0.5B", "minicpm4", False), ("MiniCPM4.1-8B", "minicpm4", False),
])
def test_license_the_checkpoint_declares(name, family, conflict, standin, tmp_path):
    from mcpm_mobile import licenses

    terms = licenses.resolve(model_dir=standin(name))
    assert terms["family"] == family
    assert bool(terms.get("declaration_conflict")) == conflict
    if conflict:  # MiniCPM-1B's card says apache-2.0; the registry's GML applied, and every output says so
        note = terms["declaration_conflict"]
        assert "declares 'apache-2.0'" in note and "General Model License" in note
        assert "registry's terms were applied (to --commercial too)" in note
        assert note in licenses.short_notice(terms) and licenses.license_record(terms)["declaration_conflict"] == note
        with pytest.raises(Exception) as e:  # --commercial without a grant: the GML gate, explained
            licenses.check_commercial(terms)
        assert note in str(e.value) and "cpm@modelbest.cn" in str(e.value)
        licenses.write_notices(tmp_path, terms)
        assert note in (tmp_path / "NOTICE.md").read_text(encoding="utf-8")
    if family == "minicpm4":
        assert licenses.check_commercial(terms)["commercial"] == "allowed"


def test_minicpm4_recognised_by_declaration_and_vocabulary(tmp_path):
    from mcpm_mobile.licenses import declared

    cfg = {"architectures": ["MiniCPMForCausalLM"], "vocab_size": 73448}
    apache = declared.Declaration("apache-2.0", None, None, None, None)
    assert declared.is_minicpm4(cfg, ["snapshot-4f3a"], apache)
    assert not declared.is_minicpm4({**cfg, "vocab_size": 122753}, ["snapshot"], apache)
    assert declared.is_minicpm4({**cfg, "vocab_size": 1}, ["openbmb/MiniCPM4.1-8B"], None)
    assert not declared.is_minicpm4({**cfg, "vocab_size": 1}, ["openbmb/MiniCPM-2B-sft-bf16"], None)
    assert declared.front_matter("---\nlicense: other\nlicense_name: gml\nlicense_link: x\n---\n# t") == {
        "license": "other", "license_name": "gml", "license_link": "x"}
    assert declared.front_matter("# no front matter\nlicense: mit") == {}


REFUSALS = {
    "minicpm3": ({"architectures": ["MiniCPM3ForCausalLM"], "model_type": "minicpm3", "kv_lora_rank": 256,
                  "q_lora_rank": 768}, "MiniCPM3 uses multi-head latent attention (MLA"),
    "moe": ({"num_experts": 8, "num_experts_per_tok": 2}, "MiniCPM-MoE (8 experts, 2 per token) needs expert routing"),
    "fatrelu": ({"hidden_act": "fatrelu"}, "MiniCPM-S uses the FATReLU activation"),
    "minicpmv": ({"architectures": ["MiniCPMV"], "model_type": "minicpmv", "vision_config": {"x": [1.0] * 500}},
                 "MiniCPM-V is a vision-language model (its vision encoder"),
    "minicpmo": ({"architectures": ["MiniCPMO"], "model_type": "minicpmo", "audio_config": {}},
                 "MiniCPM-o is an omni-modal model"),
    "llama": ({"architectures": ["LlamaForCausalLM" * 10], "model_type": "llama"}, "not a MiniCPM checkpoint"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_out_of_scope_refusals_are_short(case, standin, tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(standin("MiniCPM-2B-sft-bf16"), d)
    changes, expect = REFUSALS[case]
    cfg = {**json.loads((d / "config.json").read_text()), **changes}
    (d / "config.json").write_text(json.dumps(cfg))
    r = run_cli("quantize", d, "-o", tmp_path / "out")
    assert r.exit_code == 2
    line = r.output.strip()
    assert "\n" not in line and expect in line, line
    assert len(line) - len(str(d)) < 260, line  # never a config dump
    assert "MiniCPM 1.x, MiniCPM4 and MiniCPM4.1" in line


def test_unknown_rope_scaling_is_refused_in_one_short_line(standin, tmp_path):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(standin("MiniCPM-2B-128k"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "dynamic", "factor": 4.0, "short_factor": [1.0] * 800}
    (d / "config.json").write_text(json.dumps(cfg))
    r = run_cli("quantize", d, "-o", tmp_path / "out")
    assert r.exit_code == 2 and "rope_scaling" in r.output
    assert len(r.output.strip()) - len(str(d)) < 260, r.output


# --- the full path for two releases: .bin MiniCPM 1.x and MiniCPM4.1 (ChatML, thinking, GQA 8:1) ----------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["MiniCPM-2B-sft-bf16", "MiniCPM4.1-8B"])
def test_host_logits_match_reference(name, standin, tmp_path):
    from host_fixtures import rel_err
    from mlc_weights import dequantized_hf_weights
    from reference_numpy import ReferenceMiniCPM
    from mcpm_mobile.compiler.compile import compile_model
    from mcpm_mobile.runtime.engine import Engine

    d = standin(name)
    r = run_cli("quantize", d, "-o", tmp_path / "w", "--quantization", "q4f32_1", "--context-window", "64")
    assert r.exit_code == 0, r.output
    compile_model(tmp_path / "w", "host", tmp_path / "lib.so")
    ref = ReferenceMiniCPM(*dequantized_hf_weights(tmp_path / "w"))
    engine = Engine(tmp_path / "w", tmp_path / "lib.so")
    ids = engine.chat_prompt_ids("你好")
    fmt = chat_format.detect(d, Checkpoint(d).config)
    assert ids == [1] + engine.encode(fmt.render([("user", "你好")]))  # BOS, then the checkpoint's template
    # a second turn continues the cache (which holds the answer without its stop token) exactly as the
    # template renders the whole conversation
    first, answer = fmt.render([("user", "你好")]), "Hi."
    whole = fmt.render([("user", "你好"), ("assistant", answer), ("user", "2+2?")])
    assert whole.startswith(first + answer)
    assert engine.decode_text(engine.chat_prompt_ids("2+2?", first_turn=False)) == engine.decode_text(
        engine.encode(whole[len(first + answer):]))
    engine.reset()
    got = engine.prefill(ids)
    want = ref.logits(ids)[-1]
    assert rel_err(got, want) <= 1e-4
    assert set(engine.stop_token_ids) >= set(chat_format.from_conv_template(engine.conv).stop_token_ids)


@pytest.mark.slow
@pytest.mark.parametrize("name,target", [("MiniCPM-2B-sft-bf16", "android"), ("MiniCPM4.1-8B", "ios")])
def test_build(name, target, standin, tmp_path):
    d = standin(name)
    r = run_cli("build", d, "--target", target, "-o", tmp_path / "dist", "--no-thinking"
                if RELEASES[name].chat == "chatml_hybrid_thinking" else "--quiet", "--context-window", "64")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "dist" / target / "manifest.json").read_text())
    assert manifest["license"]["family"] == RELEASES[name].family.replace("minicpm-1", "minicpm")
    chats = list((tmp_path / "dist" / target).rglob("mlc-chat-config.json"))
    assert chats
    conv = json.loads(chats[0].read_text(encoding="utf-8"))["conv_template"]
    assert conv["name"] == RELEASES[name].chat
    if target == "ios":
        farm = json.loads(next((tmp_path / "dist" / target).rglob("chats/*.json")).read_text(encoding="utf-8"))
        assert farm["prompt_format"].endswith("<think>\n\n</think>\n\n")
        assert np.all([conv["role_empty_sep"].endswith("</think>\n\n")])


@pytest.mark.parametrize("preset,release", [
    ("minicpm-2b", "MiniCPM-2B-sft-bf16"), ("minicpm-1b", "MiniCPM-1B-sft-bf16"),
    ("minicpm-2b-128k", "MiniCPM-2B-128k"), ("minicpm4-0.5b", "MiniCPM4-0.5B"), ("minicpm4-8b", "MiniCPM4-8B"),
    ("minicpm4.1-8b", "MiniCPM4.1-8B"),
])
def test_check_presets_have_the_release_dimensions(preset, release):
    from mcpm_mobile.devices.model_profile import MODEL_PRESETS as PRESETS, ModelProfile

    c = RELEASES[release].config
    p = PRESETS[preset]
    assert (p["vocab_size"], p["hidden_size"], p["num_hidden_layers"], p["num_attention_heads"],
            p["num_key_value_heads"], p["intermediate_size"], p["max_position_embeddings"]) == (
        c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
        c["num_key_value_heads"], c["intermediate_size"], c["max_position_embeddings"])
    assert ModelProfile.from_preset(preset, "q4f16_1").weight_bytes > 0
    r = run_cli("check", "Xiaomi 12 Pro", "--preset", preset, "--json")
    assert r.exit_code in (0, 1), r.output


# --- llama.cpp and onnxruntime against the numpy reference on release stand-ins ----------------------------

def _reference_inputs(d: Path):
    from reference_numpy import ReferenceMiniCPM

    ckpt = Checkpoint(d)
    cfg = json.loads((d / "config.json").read_text())
    weights = {n: ckpt.get(n) for n in ckpt.expected_shapes()}
    fmt = chat_format.detect(d, ckpt.config)
    from tokenizers import Tokenizer

    ids = [1] + Tokenizer.from_file(str(d / "tokenizer.json")).encode(fmt.render(CONVERSATION),
                                                                       add_special_tokens=False).ids
    return ReferenceMiniCPM(cfg, weights), cfg, ids, fmt


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MiniCPM-2B-128k", "MiniCPM4.1-8B"])
def test_llamacpp_matches_reference(name, standin, tmp_path):
    from test_llamacpp import llama, llama_logits
    from mcpm_mobile.formats.gguf_export import export_gguf

    d = standin(name)
    ref, cfg, ids, fmt = _reference_inputs(d)
    path = export_gguf(d, tmp_path / "m.gguf", "f32")["output"]
    want = ref.logits(ids)
    got = llama_logits(path, ids)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    with llama(path) as llm:  # llama.cpp tokenizes the ChatML prompt as we do (<|im_start|> is one token)
        text = fmt.render(CONVERSATION)
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MiniCPM-2B-sft-fp32", "MiniCPM4-8B"])
def test_onnxruntime_matches_reference(name, standin, tmp_path):
    from reference_numpy import ReferenceMiniCPM
    from test_onnx import OrtDecoder, _hf_weights

    d = standin(name)
    _, cfg, ids, _ = _reference_inputs(d)
    r = run_cli("export-onnx", d, "-o", tmp_path / "onnx", "--accuracy-level", "1")  # fp32 compute: exact math
    assert r.exit_code == 0, r.output
    ref = ReferenceMiniCPM(cfg, _hf_weights(tmp_path / "onnx", cfg))
    got = OrtDecoder(tmp_path / "onnx", cfg).step(ids)
    want = ref.logits(ids)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
