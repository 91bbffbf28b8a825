"""Android / HarmonyOS package: MLC weights, the model library, MLC's package and app configs,
the APK (or HAP) asset layout and an adb push script."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcpm_mobile.compiler.library import ModelLibrary, tar_members
from mcpm_mobile.formats.mlc_app import APP_CONFIG, PACKAGE_CONFIG, app_config, package_config
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.support.ar import write_archive
from mcpm_mobile.target import Target

DEFAULT_APP_ID = "ai.mlc.mlcchat"  # MLCChat, the upstream MLC-LLM Android app
DEVICE = "android"  # mlc-package-config.json's device: HarmonyOS builds use MLC's Android app too


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


def write_push_script(stage: Path, model_id: str, app_id: str) -> None:
    script = stage / "push-weights.sh"
    script.write_text(push_script(model_id, app_id))
    script.chmod(0o755)


def place_weights(stage: Path, target: Target, folder: Path, bundle: bool) -> dict:
    """The asset folder of the app project; with ``bundle``, the weights ``folder`` copied into it."""
    assets = stage / target.assets
    assets.mkdir(parents=True, exist_ok=True)
    weights_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if bundle:
        shutil.copytree(folder, assets / folder.name)
    return {"assets": target.assets, "bundled_weights_bytes": weights_bytes if bundle else 0}


def package(stage: Path, target: Target, weights: Weights, lib: ModelLibrary, vram: int, app_id: str,
            bundle_weights: bool, model_url: str | None) -> dict:
    """Lay out everything besides the weights folder and the library (already in ``stage``)."""
    model_id = weights.dir.name
    write_archive(lib.path.with_name(target.static_lib), tar_members(lib.path))
    (stage / PACKAGE_CONFIG).write_text(json.dumps(package_config(model_id, lib.name, vram, weights.chat_config,
                                                                  DEVICE), indent=2))
    cfg = json.dumps(app_config(model_id, lib.name, vram, model_url), indent=2)
    (stage / "bundle").mkdir()
    (stage / "bundle" / APP_CONFIG).write_text(cfg)
    layout = place_weights(stage, target, weights.dir, bundle_weights)
    (stage / target.assets / APP_CONFIG).write_text(cfg)
    write_push_script(stage, model_id, app_id)
    return layout
