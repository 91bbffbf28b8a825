"""Licence registry, detection, notices and the commercial gate (issue 7)."""
from __future__ import annotations

import hashlib
import json
import re

import click
import pytest
from click.testing import CliRunner

from mcpm_mobile.cli import main
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.licenses import (check_commercial, detect, detect_dir, lookup, resolve, short_notice, unknown_terms,
                                  write_notices)
from mcpm_mobile.licenses.registry import families, load

SEED_000 = "000_d9ea7c77f1a69ff5.txt"
SEED_001 = "001_5b89f9a514cfbd4a.txt"
SEED_002 = "002_2321a8de8b8d9726.txt"

# Commercial status of every family, as the seed documents state it (read from the documents, not from the data):
#   qwen: commercial use supported, apply via questionnaire; over 100 million MAU needs a licence.
#   internlm: free commercial licence on application (form).
#   ziya: no commercial use because of the LLaMA weight licence.
#   bluelm: licence is for learning and non-commercial use; commercial use needs vivo's authorization.
#   yi: free commercial use after sending the registration form to yi@01.ai.
#   neural-chat: only a disclaimer ("consult a lawyer before commercial use").
#   chatglm2: the summary's restrictions section is empty; nothing said about commercial use.
#   belle: GPL-3.0 only.
#   baichuan2: eligible entities (DAU below 1 million, ...) apply by e-mail; approved by Baichuan.
#   baichuan-m1: register in advance and obtain written authorization.
#   aquila: licence named, no terms recorded.
#   minicpm: free for academic research; commercial use needs a certificate of authorization.
EXPECTED = {
    "qwen": ("registration", SEED_000, "https://dashscope.console.aliyun.com/openModelApply/Qwen-72B-Chat"),
    "internlm": ("registration", SEED_000, "https://wj.qq.com/s2/12725412/f7c1/"),
    "ziya": ("prohibited", SEED_000, None),
    "bluelm": ("authorization", SEED_000, "vivo; the source gives no address: see the MODEL_LICENSE on Hugging Face"),
    "yi": ("registration", SEED_000, "yi@01.ai"),
    "neural-chat": ("unstated", SEED_000, None),
    "chatglm2": ("unstated", SEED_000, "license@zhipuai.cn"),
    "belle": ("allowed", SEED_000, None),
    "baichuan2": ("authorization", SEED_000, "opensource@baichuan-inc.com"),
    "baichuan-m1": ("authorization", SEED_001, "opensource.contact@baichuan-inc.com"),
    "aquila": ("unstated", SEED_000, None),
    "minicpm": ("authorization", SEED_002, "cpm@modelbest.cn"),
    # not in a seed document's list: the Apache text (seed 000) as MiniCPM4/4.1's model cards declare it
    "minicpm4": ("allowed", SEED_000, None),
}

# Names a user may type for each family.
ALIASES = {
    "qwen": ["Qwen", "Tongyi Qianwen"], "internlm": ["InternLM"], "ziya": ["Ziya", "ziya-llama"],
    "bluelm": ["BlueLM", "vivo-ai/BlueLM-7B"], "yi": ["Yi", "01-ai/Yi-34B"],
    "neural-chat": ["neural-chat", "Intel/neural-chat-7b-v3-2"], "chatglm2": ["ChatGLM2", "THUDM/chatglm2-6b"],
    "belle": ["BELLE", "BelleGroup/BELLE-LLaMA-EXT-13B"], "baichuan2": ["Baichuan 2", "baichuan2"],
    "baichuan-m1": ["Baichuan-M1-14B"], "aquila": ["Aquila", "BAAI/Aquila-7B"], "minicpm": ["MiniCPM", "minicpm-2b"],
    "minicpm4": ["MiniCPM4", "minicpm4.1", "openbmb/MiniCPM4"],
}


def test_registry_covers_exactly_the_seed_families():
    assert sorted(EXPECTED) == families()
    assert set(load()["sources"]) == {SEED_000, SEED_001, SEED_002}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_family_resolves_with_documented_commercial_status(family):
    status, source, contact = EXPECTED[family]
    for name in [family, *ALIASES[family]]:
        terms = lookup(name)
        assert terms is not None, name
        assert terms["family"] == family
    terms = lookup(family)
    assert terms["commercial"]["status"] == status
    assert terms["source"] == source
    assert terms["commercial"]["contact"] == contact
    if status not in ("allowed", "prohibited"):
        assert terms["commercial"]["steps"], "a family that needs a grant must say how to get it"


def test_all_entries_share_one_schema():
    data = load()
    keys = {frozenset(entry) for entry in data["families"].values()}
    assert len(keys) == 1
    assert set(unknown_terms()) - {"family", "registry_version", "code_license_terms"} == set(next(iter(keys)))
    for entry in data["families"].values():
        assert entry["commercial"]["status"] in data["statuses"]
        assert entry["code_license"] in (None, *data["code_licenses"])
        for pattern in entry["detect"]["names"]:
            re.compile(pattern)


def test_exact_facts_and_figures():
    qwen = lookup("qwen")
    assert qwen["license"] == "Tongyi Qianwen LICENSE AGREEMENT"
    assert qwen["commercial"]["threshold"] == {"metric": "monthly active users", "limit": 100_000_000,
                                               "beyond": "request a licence from the licensor"}
    assert "Hangzhou" in qwen["venue"]

    baichuan2 = lookup("baichuan2")
    assert baichuan2["commercial"]["threshold"]["metric"] == "daily active users"
    assert baichuan2["commercial"]["threshold"]["limit"] == 1_000_000
    assert len(baichuan2["commercial"]["conditions"]) == 3

    m1 = lookup("baichuan-m1")
    assert m1["labels"] == ["Baichuan Inside"]
    assert len(m1["hand_users"]) == 2  # the model's origin and a copy of the agreement
    assert "military" in m1["forbidden_uses"][0]
    assert "Hong Kong, Macau and Taiwan" in m1["governing_law"]

    minicpm = lookup("minicpm")
    assert minicpm["license"] == "General Model License (GML)"
    assert minicpm["code_license"] == "Apache-2.0"
    assert "academic research" in minicpm["research"]

    assert lookup("yi")["license"] == "Yi Series Models License Agreement 2.0"
    assert lookup("chatglm2")["venue"] == "People's Court of Haidian District, Beijing."
    assert lookup("bluelm")["venue"] == "Dongguan Second People's Court, Guangdong Province, China."
    assert lookup("ziya")["code_license"] == lookup("belle")["code_license"] == "GPL-3.0"


@pytest.mark.parametrize("config, name, family", [
    ({"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm"}, None, "minicpm"),
    ({"architectures": ["MiniCPMForCausalLM"], "_name_or_path": "openbmb/MiniCPM-2B-sft-bf16"}, "x", "minicpm"),
    ({"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan"}, "Baichuan2-7B-Chat", "baichuan2"),
    ({"architectures": ["BaichuanForCausalLM"], "_name_or_path": "baichuan-inc/Baichuan2-13B-Chat"}, None,
     "baichuan2"),
    ({"architectures": ["BaichuanM1ForCausalLM"], "model_type": "baichuan_m1"}, None, "baichuan-m1"),
    ({"architectures": ["QWenLMHeadModel"], "model_type": "qwen"}, None, "qwen"),
    ({"model_type": "qwen"}, None, "qwen"),
    ({"architectures": ["InternLMForCausalLM"], "model_type": "internlm"}, None, "internlm"),
    ({"architectures": ["ChatGLMModel"], "model_type": "chatglm"}, "chatglm2-6b", "chatglm2"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "_name_or_path": "01-ai/Yi-6B"}, None, "yi"),
    ({"architectures": ["YiForCausalLM"], "model_type": "Yi"}, None, "yi"),
    ({"architectures": ["BlueLMForCausalLM"], "model_type": "BlueLM"}, None, "bluelm"),
    ({"architectures": ["AquilaModel"], "model_type": "aquila"}, None, "aquila"),
    ({"architectures": ["MistralForCausalLM"]}, "neural-chat-7b-v3-2", "neural-chat"),
    ({"architectures": ["LlamaForCausalLM"]}, "Ziya-LLaMA-13B-v1", "ziya"),
    ({"architectures": ["LlamaForCausalLM"]}, "BELLE-LLaMA-EXT-13B", "belle"),
    ({}, "Baichuan-M1-14B-Instruct", "baichuan-m1"),
    # Never guessed:
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "my-model", None),
    ({"architectures": ["ChatGLMModel"], "model_type": "chatglm"}, None, None),  # ChatGLM 1/2/3 share it
    ({"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan"}, None, None),  # Baichuan 1 and 2 share it
    ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "Qwen2-7B", None),
    ({"architectures": ["MiniCPM3ForCausalLM"], "model_type": "minicpm3"}, "MiniCPM3-4B", None),
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "Yi-6B", None),  # name contradicts config
    ({"architectures": ["MiniCPMForCausalLM"]}, "Baichuan2-7B", None),  # config contradicts name
    ({}, None, None),
])
def test_detect(config, name, family):
    assert detect(config, name) == family


def _checkpoint(root, name, config):
    model = root / name
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_detect_dir_and_resolve(tmp_path):
    yi = _checkpoint(tmp_path, "Yi-6B", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    assert detect_dir(yi) == "yi"
    plain = _checkpoint(tmp_path, "llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    assert detect_dir(plain) is None
    assert resolve(model_dir=plain)["family"] == "unknown"
    assert resolve(model_dir=plain, family="belle")["family"] == "belle"
    with pytest.raises(MCPMError) as e:
        resolve(model_dir=plain, family="llama")
    assert e.value.exit_code == 2


def test_cli_family_name():
    r = CliRunner().invoke(main, ["license", "minicpm"])
    assert r.exit_code == 0, r.output
    assert "General Model License" in r.output and "cpm@modelbest.cn" in r.output
    assert "Before you ship" in r.output


def test_cli_json_from_checkpoint(tmp_path):
    model = _checkpoint(tmp_path, "ckpt", {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm"})
    r = CliRunner().invoke(main, ["license", str(model), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["family"] == "minicpm"
    assert data["terms"]["commercial"]["status"] == "authorization"
    assert data["before_shipping"]


def test_cli_unknown_exits_2_and_does_not_guess(tmp_path):
    model = _checkpoint(tmp_path, "ckpt", {"architectures": ["ChatGLMModel"], "model_type": "chatglm"})
    r = CliRunner().invoke(main, ["license", str(model)])
    assert r.exit_code == 2
    assert "Unknown model family" in r.output and "model card" in r.output
    r = CliRunner().invoke(main, ["license", str(model), "--json"])
    assert r.exit_code == 2
    assert json.loads(r.output)["family"] is None
    r = CliRunner().invoke(main, ["license", "no-such-model"])
    assert r.exit_code == 2


def test_cli_model_family_overrides_detection(tmp_path):
    model = _checkpoint(tmp_path, "ckpt", {"architectures": ["ChatGLMModel"], "model_type": "chatglm"})
    r = CliRunner().invoke(main, ["license", str(model), "--model-family", "chatglm2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["family"] == "chatglm2"
    r = CliRunner().invoke(main, ["license", str(model), "--model-family", "chatglm"])
    assert r.exit_code == 2
    assert "unknown model family 'chatglm'" in r.output


@pytest.mark.parametrize("package", ["android/package", "android/app/src/main/assets", "harmonyos/package",
                                     "ios/package", "ios/LLMFarm"])
def test_notices_in_every_target_package(tmp_path, package):
    dest = tmp_path / package
    written = write_notices(dest, lookup("minicpm"))
    assert [p.name for p in written] == ["NOTICE.md", "license.json"]
    notice = (dest / "NOTICE.md").read_text(encoding="utf-8")
    assert "General Model License (GML)" in notice and "cpm@modelbest.cn" in notice
    info = json.loads((dest / "license.json").read_text(encoding="utf-8"))
    assert info["family"] == "minicpm" and info["commercial"] == "authorization"
    assert info["grant_sha256"] is None and info["terms"]["license"] == "General Model License (GML)"


def test_notices_copy_the_agreement_and_record_the_grant(tmp_path):
    model = _checkpoint(tmp_path, "Baichuan-M1-14B", {"architectures": ["BaichuanM1ForCausalLM"]})
    (model / "LICENSE.txt").write_text("agreement text")
    (model / "tokenizer.json").write_text("{}")
    grant = tmp_path / "authorization.pdf"
    grant.write_bytes(b"signed")
    written = write_notices(tmp_path / "pkg", resolve(model_dir=model), grant=grant, commercial_use=True,
                            model_dir=model)
    assert [p.relative_to(tmp_path / "pkg").as_posix() for p in written] == [
        "NOTICE.md", "license.json", "licenses/LICENSE.txt"]
    notice = (tmp_path / "pkg" / "NOTICE.md").read_text(encoding="utf-8")
    assert "Baichuan Inside" in notice and hashlib.sha256(b"signed").hexdigest() in notice
    info = json.loads((tmp_path / "pkg" / "license.json").read_text(encoding="utf-8"))
    assert info["grant_sha256"] == hashlib.sha256(b"signed").hexdigest()
    assert info["agreement_files"] == ["licenses/LICENSE.txt"]


def test_notice_for_unknown_family(tmp_path):
    write_notices(tmp_path, unknown_terms("no config.json"))
    assert "does not guess" in (tmp_path / "NOTICE.md").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "license.json").read_text())["family"] == "unknown"


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_short_notice(family):
    terms = lookup(family)
    text = short_notice(terms)
    assert 2 <= len(text.splitlines()) <= 3
    assert terms["license"] in text
    if terms["commercial"]["contact"]:
        assert terms["commercial"]["contact"] in text
    assert 2 <= len(short_notice(unknown_terms()).splitlines()) <= 3


# A stand-in for `build --commercial [--license-grant FILE]`, which calls the gate the same way.
@click.command()
@click.argument("family")
@click.option("--license-grant", "grant", default=None)
def gate(family, grant):
    record = check_commercial(lookup(family) if family != "unknown" else unknown_terms(), grant)
    click.echo(json.dumps(record))


@pytest.mark.parametrize("family", sorted(f for f, (status, *_) in EXPECTED.items() if status != "allowed"))
def test_commercial_gate_without_grant_exits_3(family):
    r = CliRunner().invoke(gate, [family])
    assert r.exit_code == 3, r.output
    assert len(r.output.strip().splitlines()) == 1
    contact = lookup(family)["commercial"]["contact"]
    if contact:
        assert contact in r.output


def test_commercial_gate_with_grant_records_its_hash(tmp_path):
    grant = tmp_path / "cpm-authorization.pdf"
    grant.write_bytes(b"certificate of authorization")
    r = CliRunner().invoke(gate, ["minicpm", "--license-grant", str(grant)])
    assert r.exit_code == 0, r.output
    record = json.loads(r.output)
    assert record["family"] == "minicpm" and record["license"] == "General Model License (GML)"
    assert record["commercial"] == "authorization" and record["commercial_use"] is True
    assert record["grant_sha256"] == hashlib.sha256(b"certificate of authorization").hexdigest()
    assert record["grant_file"] == "cpm-authorization.pdf"


def test_commercial_gate_allowed_and_unknown(tmp_path):
    assert CliRunner().invoke(gate, ["belle"]).exit_code == 0
    assert CliRunner().invoke(gate, ["unknown"]).exit_code == 3
    grant = tmp_path / "review.txt"
    grant.write_text("legal review")
    assert CliRunner().invoke(gate, ["unknown", "--license-grant", str(grant)]).exit_code == 0


def test_prohibited_cannot_be_unlocked(tmp_path):
    grant = tmp_path / "grant.pdf"
    grant.write_bytes(b"anything")
    r = CliRunner().invoke(gate, ["ziya", "--license-grant", str(grant)])
    assert r.exit_code == 3
    assert "prohibited" in r.output


def test_missing_or_empty_grant_file_is_an_error(tmp_path):
    with pytest.raises(MCPMError):
        check_commercial(lookup("minicpm"), tmp_path / "missing.pdf")
    (tmp_path / "empty.pdf").write_bytes(b"")
    with pytest.raises(MCPMError):
        check_commercial(lookup("minicpm"), tmp_path / "empty.pdf")
