"""`mcpm-mobile build` for every target and runtime, and `mcpm-mobile verify` catching damage."""
import hashlib
import json
import shutil
import subprocess

import pytest

from conftest import run_cli
from jvm import jvm_classpath, run  # noqa: F401  (fixture)
from mcpm_mobile.formats.tensor_cache import load_tensors
from mcpm_mobile.compiler.library import embedded_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tiny_dir, tmp_path_factory):
    """target -> package dir, built once per module (GQA untied: the harder layout)."""
    made = {}

    def get(target, runtime="mlc"):
        key = (target, runtime)
        if key not in made:
            dist = tmp_path_factory.mktemp(f"dist-{target}-{runtime}")
            r = run_cli("build", tiny_dir("gqa_untied"), "--target", target, "--runtime", runtime, "-o", dist, "--json")
            assert r.exit_code == 0, r.output
            made[key] = (dist / target, json.loads(r.stdout))
        return made[key]

    return get


def _archive_members(path):
    """(member names, symbol index) of a static archive, read with llvm-nm when available."""
    out = subprocess.run(["llvm-nm", "--print-armap", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("target", ["android", "harmonyos"])
def test_android_layout(built, target):
    root, s = built(target)
    model_id, lib = s["model_id"], s["model_lib"]
    assert lib.startswith("minicpm_q4f16_1_") and lib[0].isalpha()
    for rel in [f"{model_id}/tensor-cache.json", f"{model_id}/mlc-chat-config.json", f"{model_id}/tokenizer.json",
                f"lib/{lib}.tar", "lib/libmodel_android.a", "mlc-package-config.json", "bundle/mlc-app-config.json",
                "push-weights.sh", "DEPLOY.md", "NOTICE.md", "license.json", "manifest.json"]:
        assert (root / rel).is_file(), rel
    # nothing in an app module's assets: it would shadow mlc4j's mlc-app-config.json in the merged APK
    assert not (root / "app").exists() and not (root / "entry").exists()
    app = json.loads((root / "bundle/mlc-app-config.json").read_text())["model_list"][0]
    assert app["model_id"] == model_id and app["model_lib"] == lib
    assert app["model_url"] == f"./{model_id}" and "model_path" not in app  # as mlc_llm package writes it
    meta = embedded_metadata(root / "lib" / f"{lib}.tar")
    params = sum(f["size"] for f in json.loads((root / "manifest.json").read_text())["files"]
                 if f["path"].startswith(model_id + "/params_shard_"))
    kv = meta["kv_cache"]
    kv_bytes = kv["num_hidden_layers"] * 2 * kv["num_key_value_heads"] * kv["head_dim"] * meta["context_window_size"] * 2
    assert app["estimated_vram_bytes"] == params + kv_bytes + max(meta["memory_usage"].values())
    armap = _archive_members(root / "lib/libmodel_android.a")
    assert f"{lib}___tvm_ffi__library_bin" in armap
    pkg = json.loads((root / "mlc-package-config.json").read_text())
    assert pkg["model_list"][0]["model_lib"] == lib and pkg["model_list"][0]["estimated_vram_bytes"] > 0
    assert f"Android/data/ai.mlc.mlcchat/files/{model_id}" in (root / "push-weights.sh").read_text()
    assert subprocess.run(["bash", "-n", root / "push-weights.sh"]).returncode == 0
    deploy = (root / "DEPLOY.md").read_text()
    assert "apache-tvm" in deploy and "--whole-archive" in deploy
    assert "Oldest runtime that loads it:** apache/tvm 141c22fd" in deploy and "mcpm-mobile inspect" in deploy
    assert "**MLC-LLM apps:** mlc-llm 46a1d117 (2026-03-27) or later (first release v0.20.0)" in deploy
    if target == "harmonyos":
        assert "HarmonyOS 2, 3 and 4" in deploy and "HarmonyOS NEXT" in deploy and "no MLC-LLM or TVM runtime" in deploy
        gguf = root / s["gguf"]
        assert gguf.parent.name == "harmonyos-next" and gguf.suffix == ".gguf"
        assert lib == built("android")[1]["model_lib"]  # the Android library: HarmonyOS 2-4 run the Android app
        assert not list(root.rglob("*ohos*"))
    manifest = json.loads((root / "manifest.json").read_text())
    assert "141c22fd" in manifest["runtime_compat"]["oldest_tvm"]
    assert manifest["runtime_compat"]["formats"]["kv_cache_config_entries"] == 5
    assert manifest["runtime_compat"]["formats"]["attention_backends"] == ["tirx"]
    assert manifest["versions"]["apache-tvm"] and manifest["license"]["family"] == "minicpm"
    entry = next(f for f in manifest["files"] if f["path"] == "lib/libmodel_android.a")
    assert entry["sha256"] == hashlib.sha256((root / "lib/libmodel_android.a").read_bytes()).hexdigest()
    assert len(s["fit"]) >= 1 and all("status" in v for v in s["fit"])


def test_mlcchat_loads_the_android_package(built, jvm_classpath):  # noqa: F811
    """The package's app config and weights through our Kotlin transcription of MLCChat's loading."""
    root, s = built("android")
    r = run(jvm_classpath, "MLCChatConfigKt", root / "bundle/mlc-app-config.json", root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\t")[:3] == [s["model_id"], "Finished", f"system://{s['model_lib']}"]


def test_bundle_weights_android_gradle_and_apk(tiny_dir, tmp_path):
    import shutil as sh

    r = run_cli("build", tiny_dir("mha_tied"), "--target", "android", "-o", tmp_path / "d", "--bundle-weights", "--json")
    assert r.exit_code == 0, r.output
    root = tmp_path / "d" / "android"
    model_id = json.loads(r.stdout)["model_id"]
    pack = root / "android-app/model_assets"
    assert 'deliveryType = "install-time"' in (pack / "build.gradle").read_text()
    assert (root / "android-app/app/src/main/java/ai/mcpm/assets/ModelAssets.kt").is_file()
    v = run_cli("verify", root, "--json")
    assert v.exit_code == 0 and json.loads(v.stdout)["asset_packs"]["packs"] == ["model_assets"], v.output
    assert "Weights inside the app (Play Asset Delivery)" in (root / "DEPLOY.md").read_text()
    if not (sh.which("aapt") and sh.which("zipalign")):
        pytest.skip("aapt/zipalign not installed (Debian packages aapt, zipalign)")
    from mcpm_mobile.targets.android.asset_pack import check_layout

    exts = check_layout(root / "android-app")["no_compress"]
    (tmp_path / "AndroidManifest.xml").write_text('<manifest package="ai.mcpm.test" split="model_assets"/>')
    flags = [a for e in exts for a in ("-0", e)]
    subprocess.run(["aapt", "package", "-f", "-M", tmp_path / "AndroidManifest.xml", "-A", pack / "src/main/assets",
                    "-F", tmp_path / "raw.apk", *flags], check=True, capture_output=True)
    subprocess.run(["zipalign", "-f", "4", tmp_path / "raw.apk", tmp_path / "split.apk"], check=True)
    v = run_cli("verify", root, "--apk", tmp_path / "split.apk", "--json")
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["apk"]["stored_aligned"] >= len(list((root / model_id).iterdir()))


def test_ios_layout(built):
    root, s = built("ios")
    model_id, lib = s["model_id"], s["model_lib"]
    gguf = root / s["gguf"]
    assert gguf.parent == root / "llmfarm/models" and gguf.suffix == ".gguf"
    name = gguf.stem
    for rel in [f"llmfarm/chats/{name}.json", f"llmfarm/model_setting_templates/{name}.json", "llmfarm/NOTICE.md",
                "mlc/bundle/mlc-app-config.json", f"mlc/bundle/{model_id}/tensor-cache.json", f"mlc/lib/{lib}.tar",
                "mlc/lib/libmodel_iphone.a", "DEPLOY.md", "manifest.json", "NOTICE.md", "license.json"]:
        assert (root / rel).is_file(), rel
    chat = json.loads((root / f"llmfarm/chats/{name}.json").read_text())
    assert chat["model"] == gguf.name and chat["prompt_format"] == "<用户>{{prompt}}<AI>" and chat["use_metal"] is True
    app = json.loads((root / "mlc/bundle/mlc-app-config.json").read_text())["model_list"][0]
    assert app["model_path"] == model_id and app["model_lib"] == lib and "model_url" not in app
    deploy = (root / "DEPLOY.md").read_text()
    assert "newLibraryWithSource" in deploy and "metallib" in deploy and "141c22fd" in deploy
    assert f"_{lib}___tvm_ffi__library_bin" in _archive_members(root / "mlc/lib/libmodel_iphone.a")


def test_onnxruntime_package(built):
    root, s = built("android", "onnxruntime")
    d = root / s["model_id"]
    for rel in ["model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"]:
        assert (d / rel).is_file(), rel
    push = (root / "push-weights.sh").read_text()
    assert "ai.onnxruntime.genai.demo" in push and "run-as" in push and "mlcchat" not in push
    assert subprocess.run(["bash", "-n", root / "push-weights.sh"]).returncode == 0
    assert s["runtime"] == "onnxruntime" and "not for MLCChat" in (root / "DEPLOY.md").read_text()
    assert run_cli("verify", root).exit_code == 0


@pytest.mark.parametrize("target", ["android", "harmonyos", "ios"])
def test_verify_passes(built, target):
    root, _ = built(target)
    r = run_cli("verify", root, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["libraries"]


def _damaged(built, tmp_path, target="android"):
    root, s = built(target)
    copy = tmp_path / target
    shutil.copytree(root, copy)
    return copy, s


def _fails(root, expect):
    r = run_cli("verify", root)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and expect in lines[0], r.output


def test_verify_catches_corrupt_shard(built, tmp_path):
    root, s = _damaged(built, tmp_path)
    shard = root / s["model_id"] / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _fails(root, "params_shard_0.bin")


def test_verify_catches_deleted_file(built, tmp_path):
    root, s = _damaged(built, tmp_path)
    (root / s["model_id"] / "tokenizer.json").unlink()
    _fails(root, "tokenizer.json")


def test_verify_catches_edited_config(built, tmp_path):
    root, s = _damaged(built, tmp_path)
    cfg = root / s["model_id"] / "mlc-chat-config.json"
    cfg.write_text(cfg.read_text().replace('"q4f16_1"', '"q4f32_1"'))
    _fails(root, "mlc-chat-config.json")


def test_verify_catches_library_mismatch_even_with_fresh_manifest(built, tmp_path):
    """Re-hashing the manifest does not hide weights that no longer match the library."""
    from mcpm_mobile.targets.manifest import read_manifest, write_manifest

    root, s = _damaged(built, tmp_path)
    cfg = root / s["model_id"] / "mlc-chat-config.json"
    cfg.write_text(cfg.read_text().replace('"quantization": "q4f16_1"', '"quantization": "q4f32_1"'))
    info = {k: v for k, v in read_manifest(root).items() if k not in ("format", "versions", "files")}
    write_manifest(root, info)
    _fails(root, "library is for quantization 'q4f16_1'")


def test_weights_in_package_are_the_quantized_checkpoint(built, quantized_dir):
    root, s = built("android")
    ours = load_tensors(root / s["model_id"])
    ref = load_tensors(quantized_dir("gqa_untied", "q4f16_1"))
    assert ours.keys() == ref.keys() and all((ours[k] == ref[k]).all() for k in ours)


def test_bundle_weights_and_commercial_gate(tiny_dir, tmp_path):
    src = tiny_dir("mha_tied")
    r = run_cli("build", src, "--target", "android", "--runtime", "onnxruntime", "-o", tmp_path / "d", "--commercial")
    assert r.exit_code == 3 and "cpm@modelbest.cn" in r.output and not (tmp_path / "d").exists()
    grant = tmp_path / "grant.pdf"
    grant.write_bytes(b"%PDF- authorization letter")
    r = run_cli("build", src, "--target", "android", "--runtime", "onnxruntime", "-o", tmp_path / "d",
                "--commercial", "--license-grant", grant, "--bundle-weights")
    assert r.exit_code == 0, r.output
    root = tmp_path / "d" / "android"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["license"]["grant_sha256"] == hashlib.sha256(grant.read_bytes()).hexdigest()
    model_id = manifest["model_id"]
    assert (root / "android-app/model_assets/src/main/assets" / model_id / "model.onnx").is_file()
    assert manifest["asset_packs"]["packs"][0]["name"] == "model_assets"
    assert "must copy them out" in r.output and run_cli("verify", root).exit_code == 0


def test_check_device(tiny_dir, tmp_path, monkeypatch):
    from mcpm_mobile import devices

    src = tiny_dir("mha_tied")
    args = ["build", src, "--target", "android", "--runtime", "onnxruntime", "-o", tmp_path / "d"]
    r = run_cli(*args, "--check-device", "No Such Phone 9000")
    assert r.exit_code == 2 and not (tmp_path / "d").exists()
    huge = devices.ModelProfile.from_preset("minicpm-2b", "q0f32")
    monkeypatch.setattr(devices.ModelProfile, "from_config", classmethod(lambda cls, *a, **k: huge))
    r = run_cli(*args, "--check-device", "Xiaomi 12 Pro")
    assert r.exit_code == 1 and "cannot run" in r.output
    assert not (tmp_path / "d").exists()  # nothing left behind, not even the DIST folder it created


def test_existing_output_needs_force(built, tiny_dir, tmp_path):
    (tmp_path / "android").mkdir()
    (tmp_path / "android" / "x").write_text("x")
    r = run_cli("build", tiny_dir(), "--target", "android", "--runtime", "onnxruntime", "-o", tmp_path)
    assert r.exit_code == 2 and "--force" in r.output
