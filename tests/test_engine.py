"""The host Engine and `mcpm-mobile run`: generation, sampling, streaming, bad inputs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import edit_json, run_cli
from host_fixtures import host_lib  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(host_lib):
    from mcpm_mobile.runtime.engine import Engine

    return Engine(*host_lib("mha_tied", "q4f16_1"))


def test_generate_streams_and_times(engine):
    pieces = []
    r = engine.generate("the model runs on a phone", max_tokens=12, temperature=0, repetition_penalty=1.0,
                        on_text=pieces.append)
    assert r.prompt_token_ids[0] == 1  # BOS from conv_template.system_prefix_token_ids
    assert engine.decode_text(r.prompt_token_ids).endswith("<AI>") or 4 in r.prompt_token_ids
    assert 0 < len(r.token_ids) <= 12
    assert "".join(pieces) == r.text
    t = r.timings
    assert t.prefill_tokens == len(r.prompt_token_ids) and t.prefill_tokens_per_s > 0
    assert t.decode_tokens == len(r.token_ids) - 1 and (t.decode_tokens == 0 or t.decode_tokens_per_s > 0)


def test_chat_template_matches_conv_template(engine):
    ids = engine.chat_prompt_ids("hello world")
    assert ids == [1] + engine.encode("<用户>hello world<AI>")
    assert engine.chat_prompt_ids("again", first_turn=False) == engine.encode("<用户>again<AI>")


def test_sampling_is_seeded_and_respects_stops(engine):
    kw = dict(max_tokens=10, temperature=0.9, top_p=0.9, repetition_penalty=1.1, stop_token_ids=[], stop_strings=[])
    a = engine.generate("numbers like 2048", seed=3, **kw)
    b = engine.generate("numbers like 2048", seed=3, **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 10
    greedy = engine.generate("numbers like 2048", max_tokens=10, temperature=0, repetition_penalty=1.0,
                             stop_token_ids=[], stop_strings=[])
    stop = greedy.token_ids[3]
    r = engine.generate("numbers like 2048", max_tokens=10, temperature=0, repetition_penalty=1.0,
                        stop_token_ids=[stop], stop_strings=[])
    assert r.finish_reason == "stop" and stop not in r.token_ids
    assert r.token_ids == greedy.token_ids[:greedy.token_ids.index(stop)]
    r0 = engine.generate("numbers like 2048", max_tokens=0)
    assert r0.token_ids == [] and r0.finish_reason == "length"


def test_multi_turn_keeps_the_cache(engine):
    first = engine.generate("hello", max_tokens=4, temperature=0, stop_token_ids=[], stop_strings=[])
    n = len(engine.history)
    second = engine.generate("again", max_tokens=4, temperature=0, stop_token_ids=[], stop_strings=[],
                             continue_conversation=True)
    assert second.prompt_token_ids[0] != 1  # no second BOS
    assert len(engine.history) >= n + len(second.prompt_token_ids)
    assert first.token_ids  # generated something


def test_sampling_helpers():
    from mcpm_mobile.runtime.sampling import apply_repetition_penalty, sample_from_probs, top_p_filter

    logits = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
    out = apply_repetition_penalty(logits, np.array([0, 1, 1]), 2.0)
    np.testing.assert_allclose(out, [1.0, -2.0, 0.5, 3.0])
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(top_p_filter(probs, 0.7), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    np.testing.assert_allclose(top_p_filter(probs, 0.5), [1, 0, 0, 0])
    rng = np.random.default_rng(0)
    draws = {sample_from_probs(probs, 0.7, rng) for _ in range(200)}
    assert draws == {0, 1}


def test_cli_run_json(host_lib):
    weights, lib = host_lib("mha_tied", "q4f16_1")
    r = run_cli("run", weights, "--lib", lib, "--prompt", "the assistant answers", "--max-tokens", "6",
                "--temperature", "0", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    assert set(data) >= {"text", "token_ids", "prompt_token_ids", "timings", "finish_reason"}
    assert data["timings"]["prefill_tokens_per_s"] > 0
    assert len(data["token_ids"]) <= 6


def test_cli_run_streams_and_chat(host_lib):
    from click.testing import CliRunner

    from mcpm_mobile.cli import main

    weights, lib = host_lib("mha_tied", "q4f16_1")
    r = CliRunner().invoke(main, ["run", str(weights), "--lib", str(lib), "--prompt", "hello", "--max-tokens", "5",
                                  "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert "tok/s" in r.output  # the timing line (stderr is mixed in by CliRunner)
    r = CliRunner().invoke(main, ["run", str(weights), "--lib", str(lib), "--chat", "--max-tokens", "3",
                                  "--temperature", "0", "--json"], input="hello\nagain\n\n")
    assert r.exit_code == 0, r.output
    turns = json.loads(r.output[r.output.index("{"):])["turns"]
    assert len(turns) == 2 and turns[1]["prompt_token_ids"][0] != 1


def test_library_for_another_quantization_is_refused(host_lib, quantized_dir):
    from mcpm_mobile.errors import MCPMError
    from mcpm_mobile.runtime.engine import Engine

    _, lib16 = host_lib("mha_tied", "q4f16_1")
    with pytest.raises(MCPMError, match="quantization 'q4f16_1'.*q4f32_1"):
        Engine(quantized_dir("mha_tied", "q4f32_1"), lib16)
    r = run_cli("run", quantized_dir("mha_tied", "q4f32_1"), "--lib", lib16, "--prompt", "x")
    assert r.exit_code != 0 and "quantization" in r.output and "Traceback" not in r.output


def test_library_for_another_model_is_refused(host_lib, quantized_dir):
    from mcpm_mobile.errors import MCPMError
    from mcpm_mobile.runtime.engine import Engine

    _, lib = host_lib("mha_tied", "q4f16_1")
    with pytest.raises(MCPMError, match="different model"):
        Engine(quantized_dir("gqa_untied", "q4f16_1"), lib)


def test_missing_or_bad_library(quantized_dir, tmp_path):
    weights = quantized_dir("mha_tied", "q4f16_1")
    r = run_cli("run", weights, "--lib", tmp_path / "nope.so", "--prompt", "x")
    assert r.exit_code != 0 and "model library not found" in r.output
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a library")
    r = run_cli("run", weights, "--lib", bad, "--prompt", "x")
    assert r.exit_code != 0 and "not an mcpm-mobile/MLC model library" in r.output


def test_prompt_longer_than_context(host_lib):
    weights, lib = host_lib("mha_tied", "q4f32_1", context_window=24, prefill_chunk=16)
    r = run_cli("run", weights, "--lib", lib, "--prompt", "the model runs on a phone " * 10)
    assert r.exit_code != 0 and "context window is 24" in r.output


def test_compile_errors(quantized_dir, tmp_path):
    r = run_cli("compile", tmp_path / "missing", "-o", tmp_path / "x.so")
    assert r.exit_code != 0 and "no such weights directory" in r.output
    weights = tmp_path / "w"
    shutil.copytree(quantized_dir("mha_tied", "q4f16_1"), weights)
    edit_json(weights / "mlc-chat-config.json", quantization="q8f8_9")
    r = run_cli("compile", weights, "-o", tmp_path / "x.so")
    assert r.exit_code != 0 and "unknown quantization" in r.output
    r = run_cli("compile", quantized_dir("mha_tied", "q4f16_1"), "--target", "vulkan", "-o", tmp_path / "x.so")
    assert r.exit_code != 0 and "unknown target" in r.output
