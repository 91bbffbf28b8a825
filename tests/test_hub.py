"""Hub ids as checkpoints, against a local stand-in of the Hub's file routes (tests/hub_server.py).

Each command runs in a subprocess: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is
imported, as it does for a user's shell."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hub_server import HubServer
from standins import write_standin
from mcpm_mobile.support import safetensors_io
from mcpm_mobile.model import hub

REPO = "openbmb/MiniCPM4-0.5B"
BIN_REPO = "openbmb/MiniCPM-2B-sft-bf16"


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    d4 = write_standin("MiniCPM4-0.5B", root, seed=5)
    # over two of huggingface_hub's 10 MB download chunks, so an interrupted download has something to resume
    tensors = {n: np.array(safetensors_io.load(i)) for n, i in safetensors_io.read_header(d4 / "model.safetensors").items()}
    tensors["transport_test_padding"] = np.zeros(6 * 1024 * 1024, np.float32)
    safetensors_io.write(d4 / "model.safetensors", tensors)
    (d4 / "pytorch_model.bin").write_bytes(b"not needed: the repo has safetensors")  # must not be fetched
    (d4 / "onnx").mkdir()
    (d4 / "onnx" / "model.onnx").write_bytes(b"x" * 1000)  # must not be fetched either
    d2 = write_standin("MiniCPM-2B-sft-bf16", root, seed=6)
    return {REPO: d4, BIN_REPO: d2}


def _cli(args, home: Path, endpoint: str = "http://127.0.0.1:9", offline: bool = False, token: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "mcpm_mobile", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def _one_error_line(stderr: str) -> bool:
    """Exactly one ``Error:`` line and no traceback (the progress line before it is fine)."""
    return "Traceback" not in stderr and sum(line.startswith("Error: ") for line in stderr.splitlines()) == 1


def test_repo_id_parsing(tmp_path, monkeypatch):
    assert hub.parse_repo_id("openbmb/MiniCPM4-0.5B") == ("openbmb/MiniCPM4-0.5B", None)
    assert hub.parse_repo_id("openbmb/MiniCPM4.1-8B@main") == ("openbmb/MiniCPM4.1-8B", "main")
    assert hub.parse_repo_id("openbmb/MiniCPM4-0.5B@" + "a" * 40)[1] == "a" * 40
    for bad in ("MiniCPM4", "./ckpt", "/abs/path", "a/b/c", "../x", "a/..", "org/name@"):
        assert hub.parse_repo_id(bad) is None, bad
    local = tmp_path / "openbmb" / "MiniCPM4-0.5B"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub.checkpoint_dir("openbmb/MiniCPM4-0.5B") == Path("openbmb/MiniCPM4-0.5B")  # a local dir wins
    snap = tmp_path / "hub" / "models--openbmb--MiniCPM4-0.5B" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    assert hub.repo_id_of(snap) == "openbmb/MiniCPM4-0.5B" and hub.repo_id_of(local) is None


def test_quantize_from_hub_with_interrupted_download_then_offline(repos, tmp_path):
    home = tmp_path / "hf"
    with HubServer(repos, interrupt={f"{REPO}/model.safetensors"}) as server:
        r = _cli(["quantize", REPO, "-o", tmp_path / "w", "--json"], home, server.endpoint, token="hf_test_token")
        assert r.returncode == 0, r.stderr
        fetched = sorted({p.split("/resolve/")[1].split("/", 1)[1] for p in server.downloads()})
        assert server.auth == {"Bearer hf_test_token"}  # HF_TOKEN from the environment
        assert "pytorch_model.bin" not in fetched and not any(p.startswith("onnx/") for p in fetched)
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                "generation_config.json", "README.md"} <= set(fetched)
        ranges = [rng for m, p, rng in server.log if p.endswith("/model.safetensors") and m == "GET"]
        # cut off after half the file; the whole 10 MB chunks received are kept and the rest is asked for
        assert len(ranges) == 2 and ranges[0] == "" and ranges[1] == f"bytes={10 * 1024 * 1024}-", ranges
    snapshot = next((home / "hub" / "models--openbmb--MiniCPM4-0.5B" / "snapshots").iterdir())
    assert (snapshot / "model.safetensors").read_bytes() == (repos[REPO] / "model.safetensors").read_bytes()
    chat = json.loads((tmp_path / "w" / "mlc-chat-config.json").read_text(encoding="utf-8"))
    assert chat["conv_template"]["name"] == "chatml"

    # server gone: offline mode answers from the cache, and a repo never fetched fails in one line
    r = _cli(["export-gguf", REPO, "-o", tmp_path / "m.gguf"], home, offline=True)
    assert r.returncode == 0, r.stderr
    r = _cli(["export-gguf", BIN_REPO, "-o", tmp_path / "x.gguf"], home, offline=True)
    assert r.returncode == 2 and "not in the local Hugging Face cache" in r.stderr
    assert _one_error_line(r.stderr) and not (tmp_path / "x.gguf").exists()


def test_bin_repo_build_license_and_check(repos, tmp_path):
    home = tmp_path / "hf"
    with HubServer(repos) as server:
        r = _cli(["check", "Xiaomi 12 Pro", "--model", BIN_REPO, "--json"], home, server.endpoint)
        assert r.returncode in (0, 1), r.stderr
        assert not any(p.endswith(".bin") for p in server.downloads())  # check reads the config only
        r = _cli(["export-onnx", BIN_REPO, "-o", tmp_path / "onnx"], home, server.endpoint)
        assert r.returncode == 0, r.stderr
        assert any(p.endswith("/pytorch_model.bin") for p in server.downloads())
        r = _cli(["license", REPO], home, server.endpoint)  # named by its repo id: no download needed
        assert r.returncode == 0 and "Apache-2.0" in r.stdout, r.stdout + r.stderr
        r = _cli(["quantize", "openbmb/NoSuchModel", "-o", tmp_path / "n"], home, server.endpoint)
        assert r.returncode == 2 and "no such model repository" in r.stderr, r.stderr
        r = _cli(["quantize", f"{REPO}@v9", "-o", tmp_path / "n"], home, server.endpoint)
        assert r.returncode == 2 and "v9: no such revision" in r.stderr and _one_error_line(r.stderr), r.stderr


def test_hub_snapshot_licence_is_detected_by_repo_name(repos, tmp_path):
    from mcpm_mobile import licenses

    snap = tmp_path / "models--openbmb--MiniCPM4-0.5B" / "snapshots" / ("c" * 40)
    snap.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(repos[REPO], snap)
    (snap / "README.md").write_text("no front matter")  # the repo name alone must say MiniCPM4
    assert licenses.resolve(model_dir=snap)["family"] == "minicpm4"


@pytest.mark.slow
def test_build_from_hub_id(repos, tmp_path):
    home = tmp_path / "hf"
    with HubServer(repos) as server:
        r = _cli(["build", f"{REPO}@main", "--target", "android", "-o", tmp_path / "dist", "--context-window", "64",
                  "--quiet"], home, server.endpoint)
        assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "dist" / "android" / "manifest.json").read_text())
    assert manifest["license"]["family"] == "minicpm4" and manifest["license"]["license"] == "Apache-2.0"
    assert manifest["model_id"].startswith("MiniCPM4-0.5B-")  # named after the repo, not the snapshot hash
    assert manifest["source"]["hub"] == {"repo": REPO, "commit": server.sha[REPO]}
