"""DEPLOY.md: what the person integrating the package needs to know, per package layout."""
from __future__ import annotations

from mcpm_mobile.target import Target
from mcpm_mobile.targets.android.asset_pack import (ASSET_PACK_LIMIT, BASE_MODULE_LIMIT, INSTALL_TIME_LIMIT,
                                                    KOTLIN_PACKAGE, LIMIT_SOURCE)


def versions_block(versions: dict) -> str:
    return "\n".join(f"- `{k}` {v}" for k, v in versions.items())


def runtime_section(model_lib: str, lib_path: str, compat: dict) -> list[str]:
    f = compat["formats"]
    return [
        "## Which app runtimes load this library", "",
        f"The library `{lib_path}` carries these runtime-facing formats (read back from its bytes; "
        f"`mcpm-mobile inspect {lib_path}` prints them for any library):", "",
        f"- VM executable magic `{f['vm_magic']}`, version `{f['vm_version']}`",
        f"- KV-cache attention kernels tagged `{', '.join(f['attention_backends'])}`; KV-cache constructor with "
        f"{f['kv_cache_create_args']} arguments and a config of {f['kv_cache_config_entries']} entries",
        f"- system library `{model_lib}` (`system://{model_lib}`), {f['ffi_exports']} `__tvm_ffi_` exports; "
        f"runtime C API it calls: {', '.join(f'`{s}`' for s in f['ffi_imports'])}",
        "- weights indexed by `tensor-cache.json`", "",
        f"**Oldest runtime that loads it:** {compat['oldest_tvm']}.",
        f"**MLC-LLM apps:** {compat['oldest_mlc_llm']}. An app whose runtime is older fails at load "
        "(VM header, missing tvm-ffi symbol) or when it creates the KV cache.", "",
        "To check an app before shipping, look in the TVM tree it builds its runtime from (for mlc4j and the "
        "iOS app: mlc-llm's `3rdparty/tvm`); every line of `mcpm-mobile inspect` names the grep to run there. "
        "Safest: build the app runtime from the sources of the apache-tvm release listed below. Sources: "
        "`docs/contracts.md`.", "",
    ]


def mlc(target: Target, model_id: str, model_lib: str, app_id: str, versions: dict, layout: dict) -> str:
    """DEPLOY.md of an MLC package, by the target's package layout."""
    if target.package == "mlc-ios":
        return ios(target, model_id, model_lib, layout["gguf"], versions, layout["compat"])
    return android(target, model_id, model_lib, app_id, versions, layout)


def android(target: Target, model_id: str, model_lib: str, app_id: str, versions: dict, layout: dict) -> str:
    harmony = target.os == "harmonyos"
    lines = [
        f"# Deploying {model_id} ({target.os_label})", "",
        "## What is here", "",
        f"- `{model_id}/`: INT4 weights in MLC-LLM's format (`tensor-cache.json`, `params_shard_*.bin`), "
        "`mlc-chat-config.json` and the tokenizer (`tokenizer.json`; MLC's Android runtime has no SentencePiece).",
        f"- `lib/{model_lib}.tar`: the model library (OpenCL kernels + aarch64 host code) as a static system library; "
        f"`lib/{target.static_lib}`: the same objects as an archive with a symbol index.",
        "- `mlc-package-config.json`: MLC's package config; `bundle/mlc-app-config.json`: the app config exactly as "
        "`mlc_llm package` writes it (`model_url` is the local path `./<model_id>`, or `--model-url`).",
        f"- `push-weights.sh`: `adb push` of the weights into `/storage/emulated/0/Android/data/{app_id}/files/`.",
        "- `NOTICE.md`, `license.json`: the model licence and what must be done before shipping.",
        "- `manifest.json`: every file with size and sha256, and the runtime contract; "
        "`mcpm-mobile verify` re-checks it.",
    ]
    if layout.get("asset_packs"):
        lines.append("- `android-app/`: the weights as Gradle install-time asset packs, the app-module lines and "
                     "the Kotlin that copies them out (below).")
    if harmony:
        lines.append(f"- `{layout['gguf']}`: the model for HarmonyOS NEXT (GGUF for llama.cpp; below).")
    lines += [
        "", "## Linking the model library into an MLC4J-based app (MLCChat)", "",
        "1. Build MLC4J's runtime (`libtvm4j_runtime_packed.so`) from a TVM that loads this library (next section).",
        f"2. Link `lib/{target.static_lib}` with `-Wl,--whole-archive lib/{target.static_lib} -Wl,--no-whole-archive` "
        "so the static registration constructors survive (MLC4J's CMakeLists does this for `model_android`).",
        "3. App config: `mlc_llm package` with `mlc-package-config.json` writes it and moves it into "
        "`mlc4j/src/main/assets/`; without it, copy `bundle/mlc-app-config.json` there. Do not put a second "
        "`mlc-app-config.json` in the app module's assets: it would replace mlc4j's in the merged APK. "
        f"The app loads the library as `system://{model_lib}`.",
        f"4. Weights: `./push-weights.sh` (app id `{app_id}`) before the first launch, or let the app download "
        "them from `model_url`, or ship them in the app (`--bundle-weights`).", "",
    ]
    lines += runtime_section(model_lib, f"lib/{model_lib}.tar", layout["compat"])
    if layout.get("asset_packs"):
        lines += asset_pack_section(model_id, layout["asset_packs"], "MLCEngine.reload(dir.path, modelLib)")
    if harmony:
        lines += harmonyos_section(model_id, layout["gguf"])
    lines += ["## Versions that built this package", "", versions_block(versions), ""]
    return "\n".join(lines)


def asset_pack_section(model_id: str, packs: dict, load: str) -> list[str]:
    names = [p["name"] for p in packs["packs"]]
    return [
        "## Weights inside the app (Play Asset Delivery)", "",
        f"`android-app/` holds {len(names)} install-time asset pack module(s) ({', '.join(f'`{n}`' for n in names)}, "
        f"{packs['bytes'] / 1e6:.1f} MB). To use them:", "",
        "1. Copy the `model_assets*` folders next to your `app/` module and add `settings.gradle.snippet` to "
        "`settings.gradle`.",
        "2. Merge `app/build.gradle.snippet` into `android { }` of `app/build.gradle`: `assetPacks` adds the packs, "
        f"`noCompress` ({', '.join(packs['no_compress'])}) keeps the model files STORED and aligned.",
        f"3. Add `app/src/main/java/{KOTLIN_PACKAGE.replace('.', '/')}/ModelAssets.kt` and call "
        f"`val dir = ModelAssets.install(context)` off the main thread before `{load}`. It copies each file "
        f"from the assets into `getExternalFilesDir(\"\")/{model_id}/` (configs last, so an interrupted copy "
        "resumes), where TVM and MLCChat read them by path. The copy doubles the storage the weights take.",
        "4. Build an App Bundle (`./gradlew bundleRelease`). Install-time packs reach the phone as split APKs "
        "from Google Play; to test locally use `bundletool build-apks --local-testing` + `bundletool install-apks`.",
        "5. Check what Gradle produced: `mcpm-mobile verify . --apk <an APK from the .apks or the split>` "
        "(model files STORED, 4-byte aligned, identical to this package).", "",
        f"Size limits ({LIMIT_SOURCE}, compressed download sizes): base module {BASE_MODULE_LIMIT / 1e6:.0f} MB, "
        f"each asset pack {ASSET_PACK_LIMIT / 1e9:.1f} GB, all modules plus install-time asset packs "
        f"{INSTALL_TIME_LIMIT / 1e9:.0f} GB. The build split the weights to stay within them and refuses models "
        "over 4 GB. Weights never go into the base module.", "",
        "The pattern (weights in the app, copied to the external files dir at first launch) is the one of "
        "OpenBMB's MiniCPM Android app (`OpenBMB/mlc-MiniCPM`, `extract_from_asset`); that app's 2024 runtime "
        "cannot load today's libraries, so bring the pattern into an app built with a current runtime.", "",
    ]


def harmonyos_section(model_id: str, gguf: str) -> list[str]:
    return [
        "## HarmonyOS", "",
        "- **HarmonyOS 2, 3 and 4** run Android apps: install the MLCChat APK built with this package (everything "
        "above applies unchanged; `push-weights.sh` uses adb, which those phones speak with USB debugging on).",
        "- **HarmonyOS NEXT (5.x)** installs no APKs, and no MLC-LLM or TVM runtime exists for it (mlc-llm issue "
        "#3217 is open; TVM's OpenCL runtime has no OpenHarmony paths), so no model library is shipped for it. The "
        "on-device LLM runtime that exists there is llama.cpp built with the OpenHarmony SDK: community ports such "
        "as Aloereed/llama.cpp-server-ohos, a HarmonyOS NEXT app that vendors llama.cpp b4462 and loads a `.gguf` "
        f"the user picks with the system file picker. `{gguf}` is for it: llama.cpp's `minicpm` architecture, "
        "Q4_0, checked here with llama.cpp 0c1e570 (llama-cpp-python 0.3.36, tests/test_llamacpp.py), not with "
        "b4462 and not on a phone. Copy it to the phone (`hdc file send` into a folder the Files app shows, or "
        "Huawei Share) and pick it in the app. "
        "MNN also builds for OpenHarmony but needs its own model export, which this package does not contain.", "",
    ]


def ios(target: Target, model_id: str, model_lib: str, gguf: str, versions: dict, compat: dict) -> str:
    name = gguf.rsplit("/", 1)[-1]
    return "\n".join([
        f"# Deploying {model_id} (iOS)", "",
        "## LLMFarm (llama.cpp on Metal)", "",
        f"`{target.assets}/` mirrors LLMFarm's Documents folder: `models/{name}`, `chats/` and `model_setting_templates/`. "
        "Copy the three folders into LLMFarm's Documents through the Files app (or Finder file sharing); the chat "
        "appears in the app with MiniCPM's `<用户>{{prompt}}<AI>` format, Metal on. The GGUF uses llama.cpp's "
        "`minicpm` architecture with all three scale keys, so any current LLMFarm / llama.cpp build runs it.", "",
        "## MLC-LLM iOS apps (Metal)", "",
        f"- `mlc/lib/{model_lib}.tar` and `mlc/lib/{target.static_lib}`: Metal kernels and arm64 host code as a "
        "static system library.",
        f"- `mlc/bundle/mlc-app-config.json` and `mlc/bundle/{model_id}/`: the app config (`model_path` entry, as "
        "`mlc_llm package` writes it for iPhone with bundled weights) and the weights; the app reads both from "
        "`Bundle.main/bundle/`.",
        "",
        f"Add `mlc/bundle` to the app target as a folder reference named `bundle`, link `{target.static_lib}` with "
        "`-Wl,-force_load` (the registration constructors must survive), together with `libmlc_llm.a`, "
        "`libtvm_runtime.a` and the tokenizer libraries, built from a TVM that loads this library (below). The app "
        f"loads `system://{model_lib}`. Apps that need more than the default memory limit need the "
        "`com.apple.developer.kernel.increased-memory-limit` entitlement.", "",
        "### Metal shaders are compiled on the phone", "",
        "The library carries Metal **source**, not a `.metallib`: TVM's Metal runtime compiles it with "
        "`newLibraryWithSource` when the model loads, so the first load of each app launch takes longer. "
        "MLC's own iPhone build precompiles instead: TVM calls `xcrun -sdk iphoneos metal` and "
        "`metallib` through `tvm.support.xcode.compile_metal` when a `tvm_callback_metal_compile` callback is "
        "registered (mlc-llm's `python/mlc_llm/support/auto_target.py` registers it with "
        "`compile_metal(src, sdk=\"iphoneos\")`). Precompiling therefore means rebuilding the library on a Mac "
        "with Xcode with that callback registered before the build; `mcpm-mobile compile` does not do that yet, "
        "and nothing else in this package would change.", "",
    ] + runtime_section(model_lib, f"mlc/lib/{model_lib}.tar", compat) + [
        "## Versions that built this package", "", versions_block(versions), "",
    ])


def onnxruntime(model_id: str, app_id: str, versions: dict, layout: dict) -> str:
    lines = [
        f"# Deploying {model_id} (Android, ONNX Runtime)", "",
        f"- `{model_id}/`: `model.onnx` + `model.onnx.data` (INT4 `MatMulNBits`, `GroupQueryAttention`, "
        "`SkipSimplifiedLayerNormalization`: operators in ONNX Runtime's mobile builds), `genai_config.json` and the "
        "tokenizer: the folder loads in onnxruntime-genai as it is (`new Model(path)` in Java/Kotlin, "
        "`og.Model(path)` in Python).",
        "- MiniCPM's muP scalings are folded into the INT4 block scales; nothing model-specific is needed at run time.",
        "- This package is for an app that runs onnxruntime-genai, not for MLCChat (which cannot load ONNX).",
        f"- `push-weights.sh`: pushes the folder into `/data/data/{app_id}/files/` with `adb` + `run-as` "
        f"(debuggable builds). `{app_id}` is the Android chat app of microsoft/onnxruntime-inference-examples "
        "(`mobile/examples/phi-3/android`), which opens `getFilesDir()` with `new Model(...)`; set `APP_ID` and "
        "`SUBDIR` for your own app.", "",
        "## In the app", "",
        "Add onnxruntime-genai's Android package (`onnxruntime-genai-android` AAR, with "
        "`com.microsoft.onnxruntime:onnxruntime-android`), put the folder in the app's files directory and open it "
        "with `new Model(path)`. The tokenizer does not add BOS by itself: put `<s>` in the prompt. The KV cache is "
        "float32 and reserved for `search.max_length` tokens up front: lower it in `genai_config.json` on small "
        "phones. MiniCPM's prompt format is `<用户>question<AI>`.", "",
    ]
    lines += ["## Which app runtimes load it", "",
              "The test suite loads, tokenizes and generates with this kind of folder in onnxruntime-genai "
              "0.18.0 and onnxruntime 1.32 (`tests/test_onnx.py`, the versions pinned in pyproject.toml's test "
              "extra). Older onnxruntime-genai releases were not checked: `genai_config.json` is parsed strictly "
              "(onnxruntime-genai `src/config.cpp` rejects unknown keys), so a release that lacks one of our keys "
              "fails at `new Model(path)` naming it. The graph needs the `com.microsoft` contrib operators listed "
              "above, which the full `onnxruntime-android` package has; a reduced-operator mobile build must "
              "include them.", ""]
    if layout.get("asset_packs"):
        lines += asset_pack_section(model_id, layout["asset_packs"], "Model(dir.path)")
    lines += ["## Versions that built this package", "", versions_block(versions), ""]
    return "\n".join(lines)
