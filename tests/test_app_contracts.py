"""mlc-app-config.json parsed the way MLC's apps parse it.

Android: our Kotlin transcription of MLCChat's config classes and loadAppConfig
(tests/contracts/MLCChatConfig.kt, mirroring mlc-ai/mlc-llm
android/MLCChat/app/src/main/java/ai/mlc/mlcchat/AppViewModel.kt), compiled with kotlinc and run with Gson.
Python transcriptions (toolkit/formats/mlc_app.py) mirror the same file and, for iOS,
ios/MLCChat/MLCChat/Models/AppConfig.swift, ModelConfig.swift and States/AppState.swift.
"""
import json
import shutil

import pytest

from jvm import jvm_classpath, run  # noqa: F401  (fixture)
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.formats import mlc_app

MODEL_ID = "MiniCPM-test-q4f16_1-MLC"
LIB = "minicpm_q4f16_1_0123abcd"


@pytest.fixture
def files_dir(quantized_dir, tmp_path):
    """The app's external files dir after push-weights.sh: <files>/<model_id>/ holds the weights."""
    d = tmp_path / "files"
    shutil.copytree(quantized_dir("mha_tied"), d / MODEL_ID)
    return d


def _write(tmp_path, cfg, name="mlc-app-config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def test_android_config_is_what_mlc_llm_package_writes():
    entry = mlc_app.android_app_config(MODEL_ID, LIB, 123)["model_list"][0]
    assert list(entry) == ["model_id", "model_lib", "model_url", "estimated_vram_bytes"]
    assert entry["model_url"] == f"./{MODEL_ID}" and "model_path" not in entry
    assert mlc_app.android_app_config(MODEL_ID, LIB, 1, "https://huggingface.co/x/y")["model_list"][0]["model_url"] == \
        "https://huggingface.co/x/y"
    ios = mlc_app.ios_app_config(MODEL_ID, LIB, 123)["model_list"][0]
    assert ios["model_path"] == MODEL_ID and "model_url" not in ios


def test_mlcchat_kotlin_loads_our_android_config(jvm_classpath, files_dir, tmp_path):  # noqa: F811
    path = _write(tmp_path, mlc_app.android_app_config(MODEL_ID, LIB, 123456789))
    r = run(jvm_classpath, "MLCChatConfigKt", path, files_dir)
    assert r.returncode == 0, r.stderr
    model_id, state, lib, url = r.stdout.strip().split("\t")
    assert (model_id, state, lib, url) == (MODEL_ID, "Finished", f"system://{LIB}", f"./{MODEL_ID}/")


def test_mlcchat_kotlin_reports_missing_shard_and_undownloaded_model(jvm_classpath, files_dir, tmp_path):  # noqa: F811
    path = _write(tmp_path, mlc_app.android_app_config(MODEL_ID, LIB, 1, "https://huggingface.co/org/repo"))
    (files_dir / MODEL_ID / "params_shard_0.bin").unlink()
    r = run(jvm_classpath, "MLCChatConfigKt", path, files_dir)
    assert r.returncode == 0 and "\tPaused(1 to download)\t" in r.stdout, r.stdout + r.stderr
    shutil.rmtree(files_dir / MODEL_ID)
    r = run(jvm_classpath, "MLCChatConfigKt", path, files_dir)
    assert r.stdout.strip().endswith("download\t\thttps://huggingface.co/org/repo/resolve/main/mlc-chat-config.json")


def test_mlcchat_kotlin_crashes_on_model_path_config(jvm_classpath, files_dir, tmp_path):  # noqa: F811
    """What we used to write: Gson leaves the non-null model_url null and endsWith throws, as in the app."""
    path = _write(tmp_path, mlc_app.ios_app_config(MODEL_ID, LIB, 1))
    r = run(jvm_classpath, "MLCChatConfigKt", path, files_dir)
    assert r.returncode != 0 and "endsWith" in r.stderr and "non-null" in r.stderr
    with pytest.raises(MCPMError, match="model_url"):
        mlc_app.check_android_app_config(path)


def test_python_android_contract(files_dir, tmp_path):
    path = _write(tmp_path, mlc_app.android_app_config(MODEL_ID, LIB, 5))
    mlc_app.check_android_app_config(path, files_dir)
    bad = mlc_app.android_app_config(MODEL_ID, LIB, 5)
    bad["model_list"][0]["estimated_vram_bytes"] = "5"
    with pytest.raises(MCPMError, match="estimated_vram_bytes"):
        mlc_app.check_android_app_config(_write(tmp_path, bad, "bad.json"))
    (files_dir / MODEL_ID / "tokenizer.json").unlink()
    with pytest.raises(MCPMError, match="tokenizer.json"):
        mlc_app.check_android_app_config(path, files_dir)


def test_python_ios_contract(quantized_dir, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(quantized_dir("mha_tied"), bundle / MODEL_ID)
    path = _write(bundle, mlc_app.ios_app_config(MODEL_ID, LIB, 7))
    mlc_app.check_ios_app_config(path)
    no_vram = mlc_app.ios_app_config(MODEL_ID, LIB, 7)
    del no_vram["model_list"][0]["estimated_vram_bytes"]  # a non-optional Int in AppConfig.swift
    with pytest.raises(MCPMError, match="estimated_vram_bytes"):
        mlc_app.check_ios_app_config(_write(bundle, no_vram))
    wrong_dir = mlc_app.ios_app_config("elsewhere", LIB, 7)
    with pytest.raises(MCPMError, match="mlc-chat-config.json"):
        mlc_app.check_ios_app_config(_write(bundle, wrong_dir))
