"""Android package (also what HarmonyOS 2-4 phones run): MLC weights, the model library, MLC's package
and app configs, an adb push script, and with ``--bundle-weights`` the Gradle asset packs."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.support.ar import write_archive
from mcpm_mobile.targets import app_config as app_configs
from mcpm_mobile.targets.android import asset_pack
from mcpm_mobile.targets.model_lib import tar_members

DEFAULT_APP_ID = "ai.mlc.mlcchat"  # MLCChat, the upstream MLC-LLM Android app
ONNX_APP_ID = "ai.onnxruntime.genai.demo"  # onnxruntime-inference-examples' Android onnxruntime-genai chat app
STATIC_LIB = "libmodel_android.a"


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


def package(stage: Path, model_id: str, model_lib: str, vram: int, chat_config: dict, app_id: str,
            bundle_weights: bool, model_url: str | None) -> dict:
    """Lay out everything except the weights dir and the ``.tar`` (already in ``stage``).

    ``bundle/mlc-app-config.json`` is what ``mlc_llm package`` writes and moves into mlc4j's assets;
    nothing goes into ``app/src/main/assets/``, where it would shadow mlc4j's config in the merged APK.
    """
    write_static_lib(stage / "lib" / f"{model_lib}.tar", stage / "lib" / STATIC_LIB)
    (stage / "mlc-package-config.json").write_text(json.dumps(package_config(model_id, model_lib, vram, chat_config,
                                                                             "android"), indent=2))
    (stage / "bundle").mkdir()
    (stage / "bundle" / app_configs.FILENAME).write_text(
        json.dumps(app_configs.android(model_id, model_lib, vram, model_url), indent=2))
    script = stage / "push-weights.sh"
    script.write_text(push_script(model_id, app_id))
    script.chmod(0o755)
    if not bundle_weights:
        return {"assets": None, "bundled_weights_bytes": 0}
    packs = asset_pack.write(stage, stage / model_id, model_id)
    return {"assets": packs["notices"], "bundled_weights_bytes": packs["bytes"], "asset_packs": packs}
