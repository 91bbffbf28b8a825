"""Android / HarmonyOS package: MLC weights, the model library, MLC's package and app configs,
the APK (or HAP) asset layout, an adb push script and DEPLOY.md."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcpm_mobile.support.ar import write_archive
from mcpm_mobile.targets.model_lib import tar_members

DEFAULT_APP_ID = "ai.mlc.mlcchat"  # MLCChat, the upstream MLC-LLM Android app
STATIC_LIB = "libmodel_android.a"
ASSETS = {"android": "app/src/main/assets", "harmonyos": "entry/src/main/resources/rawfile"}


def write_static_lib(lib_tar: Path, dest: Path) -> Path:
    """``libmodel_android.a``: the objects of the system-lib ``.tar`` with a symbol index."""
    write_archive(dest, tar_members(lib_tar))
    return dest


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


def push_script(model_id: str, app_id: str) -> str:
    remote = f"/storage/emulated/0/Android/data/{app_id}/files/{model_id}"
    return f"""#!/usr/bin/env bash
# Push the weights of {model_id} to the app's external files directory, where MLC's apps look first.
# Usage: ./push-weights.sh [adb device serial]
set -euo pipefail
cd "$(dirname "$0")"
ADB=(adb)
if [ $# -ge 1 ]; then ADB=(adb -s "$1"); fi
"${{ADB[@]}}" shell mkdir -p /data/local/tmp/{model_id}
"${{ADB[@]}}" push --sync {model_id}/. /data/local/tmp/{model_id}/
"${{ADB[@]}}" shell "mkdir -p {remote} && cp -r /data/local/tmp/{model_id}/. {remote}/ && rm -rf /data/local/tmp/{model_id}"
echo "Pushed {model_id} to {remote}"
"""


def package(stage: Path, target: str, model_id: str, model_lib: str, vram: int, chat_config: dict, app_id: str,
            bundle_weights: bool, model_url: str | None) -> dict:
    """Lay out everything except the weights dir and the ``.tar`` (already in ``stage``)."""
    write_static_lib(stage / "lib" / f"{model_lib}.tar", stage / "lib" / STATIC_LIB)
    device = "android"
    (stage / "mlc-package-config.json").write_text(json.dumps(package_config(model_id, model_lib, vram, chat_config,
                                                                             device), indent=2))
    cfg = app_config(model_id, model_lib, vram, model_url)
    (stage / "bundle").mkdir()
    (stage / "bundle" / "mlc-app-config.json").write_text(json.dumps(cfg, indent=2))
    assets = stage / ASSETS[target]
    assets.mkdir(parents=True)
    (assets / "mlc-app-config.json").write_text(json.dumps(cfg, indent=2))
    weights_bytes = sum(p.stat().st_size for p in (stage / model_id).rglob("*") if p.is_file())
    if bundle_weights:
        shutil.copytree(stage / model_id, assets / model_id)
    script = stage / "push-weights.sh"
    script.write_text(push_script(model_id, app_id))
    script.chmod(0o755)
    return {"assets": str(assets.relative_to(stage)), "bundled_weights_bytes": weights_bytes if bundle_weights else 0}
