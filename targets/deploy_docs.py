"""DEPLOY.md: what the person integrating the package needs to know, per package layout."""
from __future__ import annotations

from mcpm_mobile.target import Target


def versions_block(versions: dict) -> str:
    return "\n".join(f"- `{k}` {v}" for k, v in versions.items())


def mlc(target: Target, model_id: str, model_lib: str, app_id: str, versions: dict, bundled: bool,
        gguf: str | None) -> str:
    """DEPLOY.md of an MLC package, by the target's package layout."""
    if target.package == "mlc-ios":
        return ios(target, model_id, model_lib, gguf, versions)
    return android(target, model_id, model_lib, app_id, versions, bundled)


def android(target: Target, model_id: str, model_lib: str, app_id: str, versions: dict, bundled: bool) -> str:
    assets = target.assets
    lines = [
        f"# Deploying {model_id} ({target.os_label})", "",
        "## What is here", "",
        f"- `{model_id}/`: INT4 weights in MLC-LLM's format (`tensor-cache.json`, `params_shard_*.bin`), "
        "`mlc-chat-config.json` and the tokenizer (`tokenizer.json`; MLC's Android runtime has no SentencePiece).",
        f"- `lib/{model_lib}.tar`: the model library (OpenCL kernels + aarch64 host code) as a static system library; "
        f"`lib/{target.static_lib}`: the same objects as an archive with a symbol index.",
        "- `mlc-package-config.json`, `bundle/mlc-app-config.json`: MLC's package and app configs.",
        f"- `{assets}/`: the asset layout to copy into the app module"
        + (" (weights included)." if bundled else " (the app config; weights are pushed separately)."),
        "- `push-weights.sh`: `adb push` of the weights into the app's external files directory.",
        "- `NOTICE.md`, `license.json`: the model licence and what must be done before shipping.",
        "- `manifest.json`: every file with size and sha256; `mcpm-mobile verify` re-checks it.", "",
        "## Linking the model library into an MLC4J-based app", "",
        "1. Build MLC4J's runtime (`libtvm4j_runtime_packed.so`) from the **same TVM** that compiled this library "
        "(versions below): the VM executable and tvm-ffi formats must match the runtime.",
        f"2. Link `lib/{target.static_lib}` into it with `-Wl,--whole-archive lib/{target.static_lib} "
        "-Wl,--no-whole-archive` "
        "so the static registration constructors survive (MLC4J's CMakeLists does this for `model_android`).",
        f"3. Put `mlc-app-config.json` in the app's assets; the app loads the library as `system://{model_lib}`.",
        f"4. Weights: run `./push-weights.sh` (app id `{app_id}`), or let the app download them from `model_url`.",
    ]
    if bundled:
        lines += ["", "## Bundled weights", "",
                  "The weights are inside the APK/HAP assets. TVM's loader reads shards by file path, so the app must "
                  "copy them out of the assets into its files directory on first launch before loading the model. "
                  "This doubles their storage on the device."]
    if target.os == "harmonyos":
        lines += ["", "## HarmonyOS", "",
                  f"The HAP resource layout is `{assets}/`. HarmonyOS 4.x phones run Android apps, so they can "
                  "also use the Android package (`mcpm-mobile build --target android`). The library here targets "
                  "`aarch64-linux-ohos` for native HarmonyOS NEXT apps, with the OpenCL kernels."]
    lines += ["", "## Versions (the runtime must match)", "", versions_block(versions), ""]
    return "\n".join(lines)


def ios(target: Target, model_id: str, model_lib: str, gguf: str, versions: dict) -> str:
    name = gguf.rsplit("/", 1)[-1]
    return "\n".join([
        f"# Deploying {model_id} (iOS)", "",
        "## LLMFarm (llama.cpp on Metal)", "",
        f"`{target.assets}/` mirrors LLMFarm's Documents folder: `models/{name}`, `chats/` and `model_setting_templates/`. "
        "Copy the three folders into LLMFarm's Documents through the Files app (or Finder file sharing); the chat "
        "appears in the app with MiniCPM's `<用户>{{prompt}}<AI>` format, Metal on. The GGUF uses llama.cpp's "
        "`minicpm` architecture with all three scale keys, so any current LLMFarm / llama.cpp build runs it.", "",
        "## MLC-LLM iOS apps (Metal)", "",
        f"- `mlc/lib/{model_lib}.tar` and `mlc/lib/{target.static_lib}`: Metal kernels (source, compiled by the "
        "device at load) and arm64 host code as a static system library.",
        f"- `mlc/bundle/mlc-app-config.json` and `mlc/bundle/{model_id}/`: the app config and the weights, bundled "
        "(`model_path`).",
        "",
        f"Add `mlc/bundle` to the app target as a folder reference, link `{target.static_lib}` with "
        "`-Wl,-force_load` (the registration constructors must survive), together with `libmlc_llm.a`, "
        f"`libtvm_runtime.a` and the tokenizer libraries built from the **same TVM** as below. The app loads "
        f"`system://{model_lib}`. Apps that need more than the default memory limit need the "
        "`com.apple.developer.kernel.increased-memory-limit` entitlement.", "",
        "## Versions (the runtime must match)", "", versions_block(versions), "",
    ])


def onnxruntime(model_id: str, app_id: str, versions: dict, bundled: bool, assets: str) -> str:
    return "\n".join([
        f"# Deploying {model_id} (Android, ONNX Runtime)", "",
        f"- `{model_id}/`: `model.onnx` + `model.onnx.data` (INT4 `MatMulNBits`, `GroupQueryAttention`, "
        "`SkipSimplifiedLayerNormalization`: operators in ONNX Runtime's mobile builds), `genai_config.json` and the "
        "tokenizer: the folder loads in onnxruntime-genai as it is (`og.Model(path)`).",
        "- MiniCPM's muP scalings are folded into the INT4 block scales; nothing model-specific is needed at run time.",
        f"- `push-weights.sh`: pushes the folder to `/storage/emulated/0/Android/data/{app_id}/files/{model_id}/`.",
        f"- `{assets}/`: the licence notices" + (" and the model folder (bundled)." if bundled else "."), "",
        "## In the app", "",
        "Add `com.microsoft.onnxruntime:onnxruntime-android` and onnxruntime-genai's Android package, copy or push the "
        "folder to the app's files directory and open it with `new Model(path)`. The tokenizer does not add BOS by "
        "itself: set `add_special_tokens` or put `<s>` in the prompt. The KV cache is float32 and reserved for "
        "`search.max_length` tokens up front: lower it in `genai_config.json` on small phones.",
        "" if not bundled else "\nBundled weights must be copied out of the APK assets before loading (they are "
        "read by file path).", "",
        "## Versions", "", versions_block(versions), "",
    ])
