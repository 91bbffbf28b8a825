"""MLC's app and package configs (``mlc-app-config.json``, ``mlc-package-config.json``) and the
``estimated_vram_bytes`` they carry."""
from __future__ import annotations

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


def app_config(model_id: str, model_lib: str, vram: int, model_url: str | None) -> dict:
    """``mlc-app-config.json`` as MLC's apps read it (``bundle/`` and the APK assets)."""
    entry = {"model_id": model_id, "model_lib": model_lib, "estimated_vram_bytes": vram}
    entry["model_url" if model_url else "model_path"] = model_url or model_id
    return {"model_list": [entry]}
