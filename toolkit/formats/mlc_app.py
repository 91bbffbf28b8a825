"""MLC's app and package configs (``mlc-app-config.json``, ``mlc-package-config.json``) and the
``estimated_vram_bytes`` they carry.

App-config writers mirror mlc-ai/mlc-llm ``python/mlc_llm/interface/package.py`` (``build_model_library``):
Android entries always carry ``model_url`` (the local path when the weights are local), iPhone entries
with bundled weights ``model_path``. The checkers transcribe what the apps require: Android
``android/MLCChat/app/src/main/java/ai/mlc/mlcchat/AppViewModel.kt`` (Gson into Kotlin data classes
``AppConfig``/``ModelRecord``/``ModelConfig``/``ParamsConfig``; a missing non-null String crashes at
launch) and iOS ``ios/MLCChat/MLCChat/Models/AppConfig.swift``, ``ModelConfig.swift``,
``States/AppState.swift`` (Swift ``Codable``: a missing non-optional key fails the decode).
"""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.formats.weights import Weights

APP_CONFIG = "mlc-app-config.json"
PACKAGE_CONFIG = "mlc-package-config.json"


def estimated_vram_bytes(weights: Weights, metadata: dict) -> int:
    """MLC's estimate: parameter bytes + KV cache for the full context + the largest temporary workspace
    (``metadata``: the library's ``_metadata``)."""
    kv = metadata["kv_cache"]
    kv_bytes = (kv["num_hidden_layers"] * 2 * kv["num_key_value_heads"] * kv["head_dim"]
                * metadata["context_window_size"] * metadata["max_batch_size"] * weights.quantization.dtype_bytes)
    return int(weights.param_bytes + kv_bytes + max(metadata["memory_usage"].values(), default=0))


def package_config(model_id: str, model_lib: str, vram: int, chat_config: dict, device: str) -> dict:
    """``mlc-package-config.json`` in MLC's schema; the prebuilt library is named so ``mlc_llm package``
    skips its own compile step."""
    return {
        "device": device,
        "model_list": [{
            "model": f"./{model_id}", "model_id": model_id, "estimated_vram_bytes": vram, "bundle_weight": True,
            "model_lib": model_lib,
            "overrides": {"context_window_size": chat_config["context_window_size"],
                          "prefill_chunk_size": chat_config["prefill_chunk_size"]},
        }],
        "model_lib_path_for_prepare_libs": {model_lib: f"lib/{model_lib}.tar"},
    }


def android_app_config(model_id: str, model_lib: str, vram: int, model_url: str | None = None) -> dict:
    """What ``mlc_llm package`` writes for ``device: android`` (key order included)."""
    return {"model_list": [{"model_id": model_id, "model_lib": model_lib, "model_url": model_url or f"./{model_id}",
                            "estimated_vram_bytes": vram}]}


def ios_app_config(model_id: str, model_lib: str, vram: int) -> dict:
    """What ``mlc_llm package`` writes for ``device: iphone`` with ``bundle_weight``: ``bundle/<model_path>/``."""
    return {"model_list": [{"model_id": model_id, "model_lib": model_lib, "model_path": model_id,
                            "estimated_vram_bytes": vram}]}


def _load(path: Path) -> list:
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))["model_list"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(path, f"cannot read: {e}")
    if not isinstance(entries, list):
        raise fail(path, "'model_list' must be a list")
    return entries


def _need(path: Path, entry: dict, key: str, kinds: tuple, what: str) -> None:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise fail(path, f"model_list entry needs '{key}' as {what}, got {json.dumps(value)}")


def check_android_app_config(path: Path, files_dir: Path | None = None) -> None:
    """MLCChat's ``loadAppConfig``: ``model_url``/``model_id``/``model_lib`` non-null Strings,
    ``estimated_vram_bytes`` a Long or null. With ``files_dir`` (the app's external files dir as the
    weights are pushed there), also what ``ModelState`` reads from ``<files_dir>/<model_id>/``."""
    for entry in _load(path):
        for key in ("model_url", "model_id", "model_lib"):
            _need(path, entry, key, (str,), "a string (Android: Kotlin non-null String)")
        if entry.get("estimated_vram_bytes") is not None:
            _need(path, entry, "estimated_vram_bytes", (int,), "an integer (Android: Long?)")
        if files_dir is not None:
            _check_model_dir(Path(files_dir) / entry["model_id"])


def _check_model_dir(model_dir: Path) -> None:
    cfg_path = model_dir / "mlc-chat-config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        index = json.loads((model_dir / "tensor-cache.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise fail(model_dir, f"the app reads mlc-chat-config.json and tensor-cache.json here: {e}")
    files = cfg.get("tokenizer_files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise fail(cfg_path, "'tokenizer_files' must be a list of file names (the app iterates it)")
    for key in ("context_window_size", "prefill_chunk_size"):
        if not isinstance(cfg.get(key), int):
            raise fail(cfg_path, f"'{key}' must be an integer")
    records = index.get("records")
    if not isinstance(records, list) or not all(isinstance(r.get("dataPath"), str) for r in records):
        raise fail(model_dir / "tensor-cache.json", "'records[].dataPath' must be strings")
    for name in files + [r["dataPath"] for r in records]:
        if not (model_dir / name).is_file():
            raise fail(model_dir / name, "listed for the app but missing: it would try to download it")


def check_ios_app_config(path: Path) -> None:
    """MLCChat iOS: ``model_lib``, ``model_id`` Strings and ``estimated_vram_bytes`` an Int (all
    required by ``AppConfig.ModelRecord``); ``model_path`` or ``model_url``; a ``model_path`` entry
    needs ``<bundle>/<model_path>/mlc-chat-config.json`` with ``tokenizer_files``."""
    bundle = Path(path).parent
    for entry in _load(path):
        for key in ("model_lib", "model_id"):
            _need(path, entry, key, (str,), "a string (iOS: Swift String)")
        _need(path, entry, "estimated_vram_bytes", (int,), "an integer (iOS: Swift Int)")
        if not isinstance(entry.get("model_path"), str) and not isinstance(entry.get("model_url"), str):
            raise fail(path, f"entry '{entry['model_id']}' has neither 'model_path' nor 'model_url'")
        if isinstance(entry.get("model_path"), str):
            cfg = bundle / entry["model_path"] / "mlc-chat-config.json"
            try:
                files = json.loads(cfg.read_text(encoding="utf-8"))["tokenizer_files"]
            except (OSError, ValueError, KeyError) as e:
                raise fail(cfg, f"the app decodes this file: {e}")
            if not isinstance(files, list):
                raise fail(cfg, "'tokenizer_files' must be a list")
