"""Android package (also what HarmonyOS 2-4 phones run): MLC weights, the model library, MLC's package
and app configs, an adb push script, and with ``--bundle-weights`` the Gradle asset packs."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.compiler.library import ModelLibrary, tar_members
from mcpm_mobile.formats.mlc_app import APP_CONFIG, PACKAGE_CONFIG, android_app_config, package_config
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.support.ar import write_archive
from mcpm_mobile.target import Target
from mcpm_mobile.targets.android import asset_pack

DEFAULT_APP_ID = "ai.mlc.mlcchat"  # MLCChat, the upstream MLC-LLM Android app
ONNX_APP_ID = "ai.onnxruntime.genai.demo"  # onnxruntime-inference-examples' Android onnxruntime-genai chat app
DEVICE = "android"  # mlc-package-config.json's device: HarmonyOS 2-4 run MLC's Android app too


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


def onnx_push_script(model_id: str, app_id: str) -> str:
    """Into ``/data/data/<app>/files/`` (``getFilesDir()``), where onnxruntime-genai apps open the model:
    microsoft/onnxruntime-inference-examples mobile/examples/phi-3/android reads it with
    ``new Model(getFilesDir().getPath())``. App-private storage is reached with ``run-as`` (debuggable builds)."""
    return f"""#!/usr/bin/env bash
# Push the ONNX model {model_id} into the files directory of an onnxruntime-genai Android app.
# Usage: ./push-weights.sh [adb device serial]
#   APP_ID  application id (default {app_id}: onnxruntime-inference-examples' phi-3 chat app)
#   SUBDIR  folder under files/ (default: none; that app opens getFilesDir() itself with new Model(path))
# run-as needs a debuggable build of the app (what Android Studio installs); for a release build,
# let the app copy or download the folder itself.
set -euo pipefail
cd "$(dirname "$0")"
APP_ID="${{APP_ID:-{app_id}}}"
DEST="files${{SUBDIR:+/$SUBDIR}}"
ADB=(adb)
if [ $# -ge 1 ]; then ADB=(adb -s "$1"); fi
"${{ADB[@]}}" shell mkdir -p /data/local/tmp/{model_id}
"${{ADB[@]}}" push --sync {model_id}/. /data/local/tmp/{model_id}/
"${{ADB[@]}}" shell chmod -R a+rX /data/local/tmp/{model_id}
"${{ADB[@]}}" shell run-as "$APP_ID" sh -c "'mkdir -p $DEST && cp -r /data/local/tmp/{model_id}/. $DEST/'"
"${{ADB[@]}}" shell rm -rf /data/local/tmp/{model_id}
echo "Pushed {model_id} to /data/data/$APP_ID/$DEST (open it with new Model(path))"
"""


def write_push_script(stage: Path, text: str) -> None:
    script = stage / "push-weights.sh"
    script.write_text(text)
    script.chmod(0o755)


def bundle(stage: Path, folder: Path, enabled: bool) -> dict:
    """With ``enabled``, the weights ``folder`` as install-time asset packs in ``android-app/``."""
    if not enabled:
        return {"assets": None, "bundled_weights_bytes": 0}
    packs = asset_pack.write(stage, folder, folder.name)
    return {"assets": packs["notices"], "bundled_weights_bytes": packs["bytes"], "asset_packs": packs}


def package(stage: Path, target: Target, weights: Weights, lib: ModelLibrary, vram: int, app_id: str,
            bundle_weights: bool, model_url: str | None) -> dict:
    """Lay out everything besides the weights folder and the library (already in ``stage``).

    ``bundle/mlc-app-config.json`` is what ``mlc_llm package`` writes and moves into mlc4j's assets;
    nothing goes into the app module's assets, where it would shadow mlc4j's config in the merged APK.
    """
    model_id = weights.dir.name
    write_archive(lib.path.with_name(target.static_lib), tar_members(lib.path))
    (stage / PACKAGE_CONFIG).write_text(json.dumps(package_config(model_id, lib.name, vram, weights.chat_config,
                                                                  DEVICE), indent=2))
    (stage / "bundle").mkdir()
    (stage / "bundle" / APP_CONFIG).write_text(
        json.dumps(android_app_config(model_id, lib.name, vram, model_url), indent=2))
    write_push_script(stage, push_script(model_id, app_id))
    return bundle(stage, weights.dir, bundle_weights)
