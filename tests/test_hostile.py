"""Hostile input: every case must end with one line on stderr, the expected exit code, no traceback,
nothing left behind, and no file outside the output touched.

The cases are generated per class (data loss, host files, paths leaving their root, offsets, values,
signals); `_count_cases` counts them for the README's Reliability section.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from host_fixtures import host_lib  # noqa: F401 - fixture
from mcpm_mobile.support import safetensors_io

TOKENIZER_NAMES = ("merges.txt", "vocab.json", "added_tokens.json", "special_tokens_map.json",
                   "tokenizer_config.json", "tokenizer.json", "tokenizer.model", "config.json",
                   "generation_config.json", "model.safetensors")


def snapshot(root: Path, skip: Path | None = None) -> dict:
    """Every file under ``root`` (not under ``skip``) with its size and hash."""
    found = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_symlink():
            found[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            found[str(p)] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        elif p.is_dir():
            found[str(p)] = "dir"
    return found


def expect_refusal(result, *needles: str, code: int = 2) -> str:
    """One ``Error:`` line, exit ``code``, no traceback; returns the line."""
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_leftovers(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not left, left


@pytest.fixture
def ckpt(tmp_path, tiny_dir):
    src = tmp_path / "model"
    shutil.copytree(tiny_dir("mha_tied"), src)
    return src


def guarded(tmp_path, args, *needles, code=2):
    """Run ``args``: a one-line refusal that leaves every file under ``tmp_path`` as it was."""
    before = snapshot(tmp_path)
    line = expect_refusal(run_cli(*args), *needles, code=code)
    assert snapshot(tmp_path) == before
    return line


# --- 1. --force never deletes what we did not write ---------------------------------------------------
STEPS = {
    "quantize": lambda src, out: ["quantize", src, "-o", out, "--quiet"],
    "export-onnx": lambda src, out: ["export-onnx", src, "-o", out, "--quiet"],
    "build": lambda src, out: ["build", src, "--target", "android", "--runtime", "onnxruntime", "-o", out, "--quiet"],
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_force_refuses_a_folder_we_did_not_write(step, ckpt, tmp_path):
    victim = tmp_path / "thesis"
    victim.mkdir()
    (victim / "chapter1.tex").write_text("years of work")
    (victim / ".bashrc").write_text("alias ll='ls -l'")
    out = victim if step != "build" else tmp_path
    if step == "build":  # DIST/android is what build replaces
        (tmp_path / "android").mkdir()
        (tmp_path / "android" / "notes.txt").write_text("mine")
    guarded(tmp_path, STEPS[step](ckpt, out) + ["--force"], "not written by mcpm-mobile")


@pytest.mark.parametrize("step", ["quantize", "export-onnx"])
@pytest.mark.parametrize("where", ["input", "parent", "inside"])
def test_output_never_on_the_input(step, where, ckpt, tmp_path):
    out = {"input": ckpt, "parent": tmp_path, "inside": ckpt / "out"}[where]
    guarded(tmp_path, STEPS[step](ckpt, out) + ["--force"], "input")


def test_build_inside_the_input(ckpt, tmp_path):
    guarded(tmp_path, STEPS["build"](ckpt, ckpt) + ["--force"], "inside the input")


def test_build_over_a_checkpoint_named_like_the_target(tmp_path, tiny_dir, monkeypatch):
    src = tmp_path / "android"
    shutil.copytree(tiny_dir("mha_tied"), src)
    monkeypatch.chdir(tmp_path)
    guarded(tmp_path, ["build", "android", "--target", "android", "-o", ".", "--force"], "input")


@pytest.mark.parametrize("step", ["quantize", "export-onnx", "tiny"])
@pytest.mark.parametrize("name", ["", ".", ".."])
def test_unusable_output_names(step, name, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["dev", "tiny-checkpoint", name] if step == "tiny" else STEPS[step](ckpt, name)
    guarded(tmp_path, args, "usable output name")


def test_llmfarm_settings_need_force(ckpt, tmp_path):
    docs = tmp_path / "docs"
    (docs / "chats").mkdir(parents=True)
    (docs / "chats" / "MiniCPM.json").write_text('{"mine": true}')
    guarded(tmp_path, ["export-gguf", ckpt, "-o", tmp_path / "m.gguf", "--llmfarm", docs], "--force")


def test_force_replaces_only_a_gguf(ckpt, tmp_path):
    target = tmp_path / "notes.gguf"
    target.write_text("not a model")
    guarded(tmp_path, ["export-gguf", ckpt, "-o", target, "--force"], "will not replace")


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("name", ["notes.so", "notes.tar", "backup.tar"])
def test_compile_never_overwrites_a_file_that_is_not_a_library(force, name, tmp_path, quantized_dir):
    weights = _weights(tmp_path, quantized_dir)
    # backup.tar: gzip-compressed like TVM's libraries, but not a tar inside
    (tmp_path / name).write_bytes(gzip.compress(b"my notes" * 100) if name == "backup.tar" else b"my notes")
    target = "android" if name.endswith(".tar") else "host"
    guarded(tmp_path, ["compile", weights, "--target", target, "-o", tmp_path / name] + (["--force"] if force else []),
            "will not replace" if force else "--force")


def test_plot_refuses_devices_and_foreign_files(tmp_path):
    foreign = tmp_path / "photo.png"
    foreign.write_text("a text file")
    guarded(tmp_path, ["devices", "--plot", foreign], "will not replace")
    expect_refusal(run_cli("devices", "--plot", "/dev/full"), "not a regular file")


# --- 2. nothing from the host is carried into a package ----------------------------------------------
@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_links_leaving_the_checkpoint_are_refused(name, ckpt, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY-----")
    target = ckpt / name
    if target.exists():
        shutil.copy(target, secret)  # a valid file, so only the link can be the problem
        target.unlink()
    target.symlink_to(secret)
    line = guarded(tmp_path, ["quantize", ckpt, "-o", tmp_path / "out"], "symbolic link")
    assert "PRIVATE" not in line


def test_links_inside_the_checkpoint_are_followed(ckpt, tmp_path):
    (ckpt / "real").mkdir()
    (ckpt / "tokenizer.json").rename(ckpt / "real" / "tokenizer.json")
    (ckpt / "tokenizer.json").symlink_to("real/tokenizer.json")
    assert run_cli("quantize", ckpt, "-o", tmp_path / "out", "--quiet").exit_code == 0


def test_hub_cache_snapshot_links_are_followed(tiny_dir, tmp_path):
    repo = tmp_path / "hub" / "models--openbmb--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in tiny_dir("mha_tied").iterdir():
        if f.is_file():
            shutil.copy(f, blobs / f.name)
            (snap / f.name).symlink_to(Path("../../blobs") / f.name)
    assert run_cli("quantize", snap, "-o", tmp_path / "out", "--quiet").exit_code == 0


# --- 3. paths read from files stay inside their root -------------------------------------------------
def _sharded(tmp_path, tiny_dir) -> Path:
    src = tmp_path / "model"
    shutil.copytree(tiny_dir("mha_untied_sharded"), src)
    return src


@pytest.mark.parametrize("entry", ["../x.safetensors", "/etc/passwd", "a/../../x.safetensors", "", 7])
def test_weight_map_entries_that_leave(entry, tmp_path, tiny_dir):
    src = _sharded(tmp_path, tiny_dir)
    index = src / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = entry
    index.write_text(json.dumps(data))
    (tmp_path / "x.safetensors").write_bytes(b"\x08" + bytes(7) + b"{}      ")
    line = guarded(tmp_path, ["quantize", src, "-o", tmp_path / "out"], "model.safetensors.index.json")
    assert "root:" not in line  # /etc/passwd's content is never printed


def _weights(tmp_path, quantized_dir) -> Path:
    dst = tmp_path / "weights"
    shutil.copytree(quantized_dir("mha_tied", "q4f16_1"), dst)
    return dst


def _edit_cache(weights: Path, fn) -> None:
    path = weights / "tensor-cache.json"
    index = json.loads(path.read_text())
    fn(index)
    path.write_text(json.dumps(index))


TENSOR_CACHE_EDITS = {
    "dataPath leaves": (lambda i: i["records"][0].__setitem__("dataPath", "../../other/params_shard_0.bin"),
                        "leaves"),
    "dataPath absolute": (lambda i: i["records"][0].__setitem__("dataPath", "/etc/passwd"), "leaves"),
    "offset 1e9": (lambda i: i["records"][0]["records"][0].__setitem__("byteOffset", 10**9), "outside"),
    "offset past the shard": (lambda i: i["records"][0]["records"][-1].__setitem__(
        "byteOffset", i["records"][0]["nbytes"] - 1), "outside"),
    "negative offset": (lambda i: i["records"][0]["records"][0].__setitem__("byteOffset", -4), "non-negative"),
    "overlap": (lambda i: i["records"][0]["records"][1].__setitem__(
        "byteOffset", i["records"][0]["records"][0]["byteOffset"]), "overlap"),
    "nbytes vs shape": (lambda i: i["records"][0]["records"][0].__setitem__("shape", [2**40, 2**40]),
                        "does not match"),
    "string shape": (lambda i: i["records"][0]["records"][0].__setitem__("shape", ["64"]), "shape"),
    "NaN in JSON": (None, "NaN"),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CACHE_EDITS))
def test_tensor_cache_is_checked_before_loading(case, tmp_path, quantized_dir, host_lib):
    weights = _weights(tmp_path, quantized_dir)
    edit, needle = TENSOR_CACHE_EDITS[case]
    if edit is None:
        path = weights / "tensor-cache.json"
        path.write_text(path.read_text().replace('"ParamBytes": ', '"ParamBytes": NaN, "x": ', 1))
    else:
        _edit_cache(weights, edit)
    _, lib = host_lib("mha_tied", "q4f16_1")
    guarded(tmp_path, ["run", weights, "--lib", lib, "--prompt", "hi", "--max-tokens", "2"], needle)


def test_truncated_library_is_refused(tmp_path, quantized_dir, host_lib):
    weights, lib = host_lib("mha_tied", "q4f16_1")
    cut = tmp_path / "cut.so"
    cut.write_bytes(Path(lib).read_bytes()[: Path(lib).stat().st_size // 2])
    guarded(tmp_path, ["run", weights, "--lib", cut, "--prompt", "hi"], "truncated library")


# --- 4./6. sizes and values ---------------------------------------------------------------------------
def _rewrite_safetensors(src: Path, header_edit=None, tensors_edit=None) -> None:
    path = src / "model.safetensors"
    info = safetensors_io.read_header(path)
    tensors = {n: np.array(safetensors_io.load(i)) for n, i in info.items()}
    if tensors_edit:
        tensors_edit(tensors)
    safetensors_io.write(path, tensors)
    if header_edit:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header_edit(header)
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _huge_embedding(h):
    h["model.embed_tokens.weight"]["shape"] = [2**58, 64]


def _alias(h):
    a, b = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    h[b]["data_offsets"] = h[a]["data_offsets"]


def _negative(h):
    h["model.norm.weight"]["shape"] = [-64]


def _overflow_f16(t):
    t["model.layers.0.mlp.up_proj.weight"][0, 0] = 3e38


SAFETENSORS_CASES = {
    "2**58 rows": (_huge_embedding, None, "does not match shape"),
    "aliased tensors": (_alias, None, "overlap"),
    "negative dim": (_negative, None, "non-negative"),
    "beyond float16": (None, _overflow_f16, "beyond float16"),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_safetensors_values(case, ckpt, tmp_path):
    header_edit, tensors_edit, needle = SAFETENSORS_CASES[case]
    _rewrite_safetensors(ckpt, header_edit, tensors_edit)
    guarded(tmp_path, ["quantize", ckpt, "-o", tmp_path / "out"], needle)


RUN_OPTIONS = {
    "temperature nan": (["--temperature", "nan"], "temperature"),
    "penalty nan": (["--repetition-penalty", "nan"], "repetition penalty"),
    "penalty tiny": (["--repetition-penalty", "1e-300"], "repetition penalty"),
    "seed -1": (["--seed", "-1"], "seed"),
    "top-p inf": (["--top-p", "inf"], "top-p"),
}


@pytest.mark.parametrize("case", sorted(RUN_OPTIONS))
def test_sampling_options(case, tmp_path, host_lib):
    weights, lib = host_lib("mha_tied", "q4f16_1")
    extra, needle = RUN_OPTIONS[case]
    r = run_cli("run", weights, "--lib", lib, "--prompt", "hi", "--max-tokens", "2", *extra)
    assert r.exit_code == 2 and "Traceback" not in r.output and needle in r.output.lower(), r.output


def test_prompt_that_is_not_utf8(tmp_path, host_lib):
    weights, lib = host_lib("mha_tied", "q4f16_1")
    r = subprocess.run([sys.executable, "-m", "mcpm_mobile", "run", str(weights), "--lib", str(lib),
                        "--prompt", b"\xff\xfehello".decode("utf-8", "surrogateescape")],
                       capture_output=True, text=True, errors="replace")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "UTF-8" in r.stderr, r.stderr


# --- 7. signals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_mid_quantize_leaves_nothing(sig, tmp_path):
    from mcpm_mobile.model.tiny import write_tiny_checkpoint

    src = write_tiny_checkpoint(tmp_path / "big", layers=4, hidden=1024, heads=8, vocab=8000, seed=5)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mcpm_mobile", "quantize", str(src), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(".out.tmp-" in p.name for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, "quantize ended before it could be interrupted"
        time.sleep(0.002)
    proc.send_signal(signal.SIGSTOP)  # hold it mid-write, so the signal lands during the work
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "Interrupted" in err
    assert not out.exists()
    no_leftovers(tmp_path)


def test_cases_are_counted():
    """The README's Reliability section quotes this number; keep them in step."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"{_count_cases()} hostile cases" in readme


def _count_cases() -> int:
    module = sys.modules[__name__]
    total = 0
    for name in dir(module):
        fn = getattr(module, name)
        if not name.startswith("test_") or name == "test_cases_are_counted":
            continue
        count = 1
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                count *= len(mark.args[1])
        total += count
    return total



# --- 7. full disks and read-only outputs ------------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


DISK_FAULTS = {
    "quantize": ("mcpm_mobile.formats.tensor_cache.TensorCacheWriter._commit",
                 lambda src, out: ["quantize", src, "-o", out]),
    "export-gguf": ("mcpm_mobile.formats.gguf_export._write_tensor",
                    lambda src, out: ["export-gguf", src, "-o", out.with_suffix(".gguf")]),
    "tiny-checkpoint": ("mcpm_mobile.support.safetensors_io.write_stream",
                        lambda src, out: ["dev", "tiny-checkpoint", out]),
}


@pytest.mark.parametrize("step", sorted(DISK_FAULTS))
def test_full_disk(step, ckpt, tmp_path, monkeypatch):
    where, args = DISK_FAULTS[step]
    monkeypatch.setattr(where, _no_space)
    guarded(tmp_path, args(ckpt, tmp_path / "out"), "No space left on device")


@pytest.mark.parametrize("step", ["quantize", "tiny-checkpoint"])
def test_read_only_output_folder(step, ckpt, tmp_path):
    locked = Path("/sys/fs")  # sysfs: read-only even for root
    if os.access(locked, os.W_OK) and os.geteuid() != 0:
        pytest.skip("no read-only folder on this machine")
    args = DISK_FAULTS[step][1](ckpt, locked / "out")
    line = guarded(tmp_path, args, "/sys/fs/out: cannot write")
    assert ".tmp-" not in line


# --- 5. config values ------------------------------------------------------------------------------------
CONFIG_CASES = {
    "kv heads 0": ({"num_key_value_heads": 0}, "num_key_value_heads"),
    "kv heads string": ({"num_key_value_heads": "2"}, "num_key_value_heads"),
    "kv heads not dividing": ({"num_key_value_heads": 3}, "num_key_value_heads"),
    "eps string": ({"rms_norm_eps": "x"}, "rms_norm_eps"),
    "eps zero": ({"rms_norm_eps": 0}, "rms_norm_eps"),
    "dim_model_base 0": ({"dim_model_base": 0}, "dim_model_base"),
    "max positions -5": ({"max_position_embeddings": -5}, "max_position_embeddings"),
    "tie 'no'": ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    "vocab 2**58": ({"vocab_size": 2**58}, "vocab_size"),
    "vocab bool": ({"vocab_size": True}, "vocab_size"),
    "hidden float": ({"hidden_size": 64.0}, "hidden_size"),
    "layers missing": ({"num_hidden_layers": None}, "num_hidden_layers"),
    "layers 1 of 2": ({"num_hidden_layers": 1}, "not used by config.json"),
    "scale_emb inf": ({"scale_emb": 1e400}, "scale_emb"),
    "scale_depth NaN": ({"scale_depth": float("nan")}, "not valid JSON"),
    "eos outside": ({"eos_token_id": 10**6}, "eos_token_id"),
    "eos empty list": ({"eos_token_id": []}, "eos_token_id"),
    "rope_theta list": ({"rope_theta": [1, 2]}, "rope_theta"),
    "hidden_act dict": ({"hidden_act": {"a": 1}}, "hidden_act"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_values(case, ckpt, tmp_path):
    edit, needle = CONFIG_CASES[case]
    path = ckpt / "config.json"
    data = json.loads(path.read_text())
    for key, value in edit.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    text = json.dumps(data).replace("Infinity", "1e400")  # NaN stays NaN: strict JSON refuses it
    path.write_text(text)
    line = guarded(tmp_path, ["quantize", ckpt, "-o", tmp_path / "out"], "config.json", needle)
    assert len(line) < 300


OPTION_CASES = {
    "quantize context 1e8": (lambda src, out: ["quantize", src, "-o", out, "--context-window", "100000000"],
                             "max_position_embeddings"),
    "build context 1e8": (lambda src, out: ["build", src, "--target", "android", "-o", out, "--context-window",
                                            "100000000"], "max_position_embeddings"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_out_of_range_options(case, ckpt, tmp_path):
    args, needle = OPTION_CASES[case]
    guarded(tmp_path, args(ckpt, tmp_path / "out"), needle)


def test_compile_context_beyond_the_model(tmp_path, quantized_dir):
    weights = _weights(tmp_path, quantized_dir)
    guarded(tmp_path, ["compile", weights, "-o", tmp_path / "lib.so", "--context-window", "100000000"],
            "max_position_embeddings")


# --- 8. verify is an integrity check ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def packages(tiny_dir, tmp_path_factory):
    """runtime -> a fresh built package (android), built once per module."""
    made = {}
    for runtime in ("mlc", "onnxruntime"):
        dist = tmp_path_factory.mktemp(f"pkg-{runtime}")
        r = run_cli("build", tiny_dir("mha_tied"), "--target", "android", "--runtime", runtime, "-o", dist, "-q")
        assert r.exit_code == 0, r.output
        made[runtime] = dist / "android"
    return made


def _package_copy(packages, runtime, tmp_path) -> Path:
    dst = tmp_path / "pkg"
    shutil.copytree(packages[runtime], dst, symlinks=True)
    return dst


def _rewrite_manifest(pkg: Path, fn, redigest: bool = True) -> None:
    from mcpm_mobile.targets import manifest

    path = pkg / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    if redigest:
        data[manifest.DIGEST] = manifest.digest(data)
    path.write_text(json.dumps(data))


def _drop(pkg: Path, suffix: str, redigest: bool = True) -> None:
    """Delete a file and its manifest entry, as someone covering their tracks would."""
    for p in pkg.rglob("*"):
        if p.is_file() and p.relative_to(pkg).as_posix().endswith(suffix):
            p.unlink()
    _rewrite_manifest(pkg, lambda m: m.__setitem__("files", [f for f in m["files"]
                                                             if not f["path"].endswith(suffix)]), redigest)


def _rehash(pkg: Path, rel: str, content: bytes) -> None:
    from mcpm_mobile.targets import manifest

    (pkg / rel).write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()

    def edit(m):
        for f in m["files"]:
            if f["path"] == rel:
                f.update(size=len(content), sha256=digest)
    _rewrite_manifest(pkg, edit)


def _weights_rel(pkg: Path) -> str:
    return next(p for p in pkg.rglob("tensor-cache.json")).parent.relative_to(pkg).as_posix()


def _empty(pkg):
    for p in list(pkg.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (pkg / "manifest.json").write_text(json.dumps({"format": "mcpm-mobile-package/1", "files": []}))


VERIFY_CASES = {
    "emptied, empty manifest": ("mlc", _empty, "manifest"),
    "edited field, no re-digest": ("mlc", lambda p: _rewrite_manifest(
        p, lambda m: m.__setitem__("estimated_vram_bytes", 1), redigest=False), "edited"),
    "weights removed with entries": ("mlc", lambda p: _drop(p, "tensor-cache.json"), "weights"),
    "tokenizer removed with entry": ("mlc", lambda p: _drop(p, "MLC/tokenizer.json"), "tokenizer.json"),
    "NOTICE removed with entry": ("mlc", lambda p: _drop(p, "NOTICE.md"), "NOTICE.md"),
    "library removed with entry": ("mlc", lambda p: _drop(p, ".tar"), "library"),
    "garbage tokenizer re-hashed": ("mlc", lambda p: _rehash(p, _weights_rel(p) + "/tokenizer.json",
                                                             b'{"model": 1}'), "tokenizer"),
    "NaN in a config re-hashed": ("mlc", lambda p: _rehash(p, "mlc-package-config.json", b'{"x": NaN}'), "NaN"),
    "licence edited": ("mlc", lambda p: _rewrite_manifest(
        p, lambda m: m["license"].__setitem__("commercial", "allowed")), "licence"),
    "memory edited": ("mlc", lambda p: _rewrite_manifest(
        p, lambda m: m.__setitem__("estimated_vram_bytes", 1)), "estimated_vram_bytes"),
    "quantization edited": ("mlc", lambda p: _rewrite_manifest(
        p, lambda m: m.__setitem__("quantization", "q4f32_1")), "quantization"),
    "entry with ..": ("mlc", lambda p: _rewrite_manifest(
        p, lambda m: m["files"].append({"path": "../x", "size": 1, "sha256": "0" * 64})), "leaves"),
    "link to /etc": ("mlc", lambda p: (p / "etc").symlink_to("/etc"), "symbolic link"),
    "dataPath leaves, re-hashed": ("mlc", lambda p: _rehash(
        p, _weights_rel(p) + "/tensor-cache.json",
        (p / _weights_rel(p) / "tensor-cache.json").read_bytes().replace(b'"params_shard_0.bin"',
                                                                         b'"../../x/params_shard_0.bin"')),
        "leaves"),
    "onnx data leaves": ("onnxruntime", lambda p: _onnx_location(p, "../../outside.data"), "leaves"),
}


def _onnx_location(pkg: Path, location: str) -> None:
    import onnx

    model_path = next(pkg.rglob("model.onnx"))
    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        for e in init.external_data:
            if e.key == "location":
                e.value = location
    _rehash(pkg, model_path.relative_to(pkg).as_posix(), model.SerializeToString())


@pytest.mark.parametrize("case", sorted(VERIFY_CASES))
def test_verify_catches(case, packages, tmp_path):
    runtime, damage, needle = VERIFY_CASES[case]
    pkg = _package_copy(packages, runtime, tmp_path)
    assert run_cli("verify", pkg, "-q").exit_code == 0
    damage(pkg)
    r = run_cli("verify", pkg)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), r.output


def test_tokenizer_ids_beyond_the_vocabulary(ckpt, tmp_path):
    """A tokenizer with more tokens than the embedding has rows would crash `run` at the first such id."""
    path = ckpt / "config.json"
    data = json.loads(path.read_text())
    data["vocab_size"] = 300  # the tiny tokenizer has 512 tokens; the embedding must shrink with it
    path.write_text(json.dumps(data))
    info = safetensors_io.read_header(ckpt / "model.safetensors")
    tensors = {n: np.array(safetensors_io.load(i)) for n, i in info.items()}
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:300]
    safetensors_io.write(ckpt / "model.safetensors", tensors)
    guarded(tmp_path, ["quantize", ckpt, "-o", tmp_path / "out"], "outside the model's vocabulary")


# --- 9. the commands added later: inspect, eval, build --gguf-type, --thinking -------------------------------
def _foreign(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


LATER_COMMANDS = {
    "inspect-foreign-file": lambda ck, t: (["inspect", _foreign(t, "notes.tar", b"my notes\n")], "not a library archive"),
    "inspect-broken-gzip": lambda ck, t: (["inspect", _foreign(t, "lib.tar", b"\x1f\x8b\x08\x00" + b"\x00" * 40)],
                                          "not a library archive"),
    "inspect-missing": lambda ck, t: (["inspect", t / "nothing.so"], "not found"),
    "eval-text-shorter-than-a-window": lambda ck, t: (["eval", ck, "--text", _foreign(t, "t.txt", b"hi there")],
                                                      "fewer than one evaluation window"),
    "eval-foreign-gguf": lambda ck, t: (["eval", ck, "--text", Path(__file__).parents[1] / "README.md", "--gguf",
                                         _foreign(t, "m.gguf", b"GGML" + b"\x00" * 60)], "not a GGUF file"),
    "build-gguf-type-for-android": lambda ck, t: (["build", ck, "--target", "android", "--gguf-type", "q4_k_m",
                                                   "-o", t / "dist"], "--gguf-type"),
    "quantize-thinking-without-a-thinking-template": lambda ck, t: (["quantize", ck, "-o", t / "q", "--thinking"],
                                                                    "no thinking mode"),
}


@pytest.mark.parametrize("case", sorted(LATER_COMMANDS))
def test_later_commands(case, ckpt, tmp_path):
    args, needle = LATER_COMMANDS[case](ckpt, tmp_path)
    guarded(tmp_path, args, needle)
