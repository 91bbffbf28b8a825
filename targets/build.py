"""``mcpm-mobile build``: checkpoint -> quantize -> compile -> package, landing atomically in DIST/<target>/.

Runtimes: ``mlc`` (TVM model library + MLC weights; Android, HarmonyOS, iOS, the iOS package also
carries an LLMFarm GGUF) and ``onnxruntime`` (an INT4 ONNX decoder for ONNX Runtime Mobile /
onnxruntime-genai; Android). Each step hands the next the artifact it made.

HarmonyOS: phones on HarmonyOS 2-4 install Android APKs, so ``harmonyos`` is the Android package plus,
for HarmonyOS NEXT (5.x, no APKs, no MLC/TVM runtime), a GGUF for the llama.cpp builds that exist there.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.quantization import DEFAULT, get_quantization
from mcpm_mobile.support.atomic import atomic_dir, unmark
from mcpm_mobile.support.output import Output
from mcpm_mobile.target import PACKAGED, Target, get_target
from mcpm_mobile.targets import deploy_docs, manifest
from mcpm_mobile.targets.package import Package

RUNTIMES = ("mlc", "onnxruntime")
ONNX_QUANTIZATION = "q4f32_1"  # MatMulNBits block 32 with float32 scales: the same weights as MLC's q4f32_1


def default_model_id(ckpt: Checkpoint, quantization: str, runtime: str = "mlc") -> str:
    from mcpm_mobile.model.hub import repo_id_of

    base = Path(ckpt.config.name_or_path or repo_id_of(ckpt.dir) or ckpt.dir.resolve()).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "MiniCPM"
    return f"{base}-{quantization}-MLC" if runtime == "mlc" else f"{base}-int4-onnx"


def check_options(target: Target, runtime: str, quantization: str | None, bundle_weights: bool,
                  model_url: str | None) -> None:
    """Refuse what a target cannot do, rather than ignoring it."""
    if target.name not in PACKAGED:
        raise fail("target", f"'{target.name}' is not a package target (choose from {', '.join(PACKAGED)})")
    if runtime not in RUNTIMES:
        raise fail("runtime", f"unknown '{runtime}' (choose from {', '.join(RUNTIMES)})")
    if runtime not in target.runtimes:
        raise MCPMError(f"--runtime {runtime} packages for --target "
                        f"{' or '.join(t for t in PACKAGED if runtime in get_target(t).runtimes)} only")
    if runtime == "onnxruntime" and quantization not in (None, ONNX_QUANTIZATION):
        raise MCPMError(f"--runtime onnxruntime writes INT4 with float32 block scales ({ONNX_QUANTIZATION}); "
                        "--quantization applies to --runtime mlc only")
    if bundle_weights and not target.bundles_weights:
        raise MCPMError(f"--bundle-weights: the {target.name} package always bundles the weights (mlc/bundle/)")
    if model_url and not target.bundles_weights:
        raise MCPMError(f"--model-url: the {target.name} package bundles the weights; the app does not download them")


def build(model_dir: Path, target: str, out_dir: Path, quantization: str | None = None, runtime: str = "mlc",
          context_window: int | None = None, prefill_chunk: int | None = None, model_id: str | None = None,
          app_id: str | None = None, bundle_weights: bool = False, model_url: str | None = None,
          force: bool = False, commercial: bool = False, license_grant: Path | None = None,
          model_family: str | None = None, check_device: str | None = None, thinking: bool | None = None,
          out: Output = Output()) -> dict:
    from mcpm_mobile import licenses
    from mcpm_mobile.targets.android import package as android

    target = get_target(target)
    check_options(target, runtime, quantization, bundle_weights, model_url)
    if check_device:
        from mcpm_mobile.devices import find_phone

        find_phone(check_device)  # an unknown name fails before any work
    ckpt = Checkpoint(model_dir)
    terms = licenses.resolve(model_dir=model_dir, family=model_family)
    record = (licenses.check_commercial(terms, license_grant) if commercial
              else licenses.license_record(terms, license_grant))
    quant = get_quantization(ONNX_QUANTIZATION if runtime == "onnxruntime" else quantization or DEFAULT)
    quantization = quant.name
    model_id = model_id or default_model_id(ckpt, quantization, runtime)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", model_id):
        raise fail("--model-id", f"'{model_id}' must be letters, digits, '.', '_' or '-'")
    app_id = app_id or (android.ONNX_APP_ID if runtime == "onnxruntime" else android.DEFAULT_APP_ID)
    start = time.perf_counter()
    dest = Path(out_dir) / target.name
    info = {"target": target.name, "runtime": runtime, "model_id": model_id, "quantization": quantization,
            "source": {"path": str(Path(model_dir).resolve()), "sha256": ckpt.fingerprint()}, "license": record}
    from mcpm_mobile.model.hub import repo_id_of

    if repo_id_of(model_dir):  # from the Hugging Face cache: the repo and the commit it was fetched at
        info["source"]["hub"] = {"repo": repo_id_of(model_dir), "commit": Path(model_dir).resolve().name}
    versions = manifest.tool_versions()
    with atomic_dir(dest, force=force, inputs=(model_dir, license_grant), kind="package") as stage:
        if runtime == "onnxruntime":
            layout = _onnx(stage, target, ckpt, model_id, app_id, bundle_weights, context_window, out)
            doc = deploy_docs.onnxruntime(model_id, app_id, versions, layout)
        else:
            layout = _mlc(stage, target, ckpt, quant, model_id, app_id, bundle_weights, model_url,
                          context_window, prefill_chunk, out, thinking)
            info.update(model_lib=layout["model_lib"], estimated_vram_bytes=layout["vram"],
                        runtime_compat=layout["compat"])
            if "gguf" in layout:
                info["gguf"] = layout["gguf"]
            doc = deploy_docs.mlc(target, model_id, layout["model_lib"], app_id, versions, layout)
        if layout.get("asset_packs"):
            info["asset_packs"] = layout["asset_packs"]
        (stage / "DEPLOY.md").write_text(doc, encoding="utf-8")
        for where in [stage] + ([stage / layout["assets"]] if layout["assets"] else []):
            licenses.write_notices(where, terms, grant=license_grant, commercial_use=commercial, model_dir=model_dir)
        fit = _fit(layout["profile"], target, check_device, context_window)
        package = Package.write(stage, info)
    summary = {"output": str(dest), **info, "fit": fit, "files": len(package.files),
               "bytes": sum(f["size"] for f in package.files), "seconds": round(time.perf_counter() - start, 2)}
    if bundle_weights:
        out.info(f"[yellow]Weights bundled into android-app/ (Gradle asset packs): the app grows by "
                 f"{layout['bundled_weights_bytes'] / 1e6:.1f} MB, and the app must copy them out of the assets "
                 "before loading (see DEPLOY.md).[/yellow]")
    if target.name == "harmonyos":
        out.info("HarmonyOS 2-4 install the Android package here; HarmonyOS NEXT has no MLC/TVM runtime: "
                 "use the GGUF in harmonyos-next/ with a llama.cpp build for HarmonyOS NEXT (see DEPLOY.md).")
    out.info(licenses.short_notice(terms, record))
    return summary


def _mlc(stage: Path, target: Target, ckpt: Checkpoint, quant, model_id: str, app_id: str, bundle_weights: bool,
         model_url: str | None, context_window: int | None, prefill_chunk: int | None, out: Output,
         thinking: bool | None = None) -> dict:
    from mcpm_mobile.compiler import runtime_compat
    from mcpm_mobile.compiler.compile import compile_model
    from mcpm_mobile.compiler.library import model_lib_name
    from mcpm_mobile.devices import ModelProfile
    from mcpm_mobile.formats.mlc_app import estimated_vram_bytes
    from mcpm_mobile.quantize.convert import quantize
    from mcpm_mobile.targets.android import package as android
    from mcpm_mobile.targets.ios import package as ios

    if target.package == "mlc-ios":
        weights_dir, lib_dir = ios.mlc_paths(stage, model_id)
    else:
        weights_dir, lib_dir = stage / model_id, stage / "lib"
    weights = quantize(ckpt, quant, weights_dir, out=out, context_window=context_window, prefill_chunk=prefill_chunk,
                       thinking=thinking)
    unmark(weights_dir)
    lib_target = get_target(target.library_from) if target.library_from else target
    lib_name = model_lib_name(weights.chat_config, lib_target.key)
    lib_dir.mkdir(parents=True)
    lib = compile_model(weights, lib_target, lib_dir / lib_target.library_file(lib_name),
                        system_lib_prefix=lib_name + "_", out=out)
    (lib_dir / f"{lib_name}.metadata.json").write_text(json.dumps(lib.metadata, indent=2))
    vram = estimated_vram_bytes(weights, lib.metadata)
    formats = runtime_compat.read_formats(lib.path)
    compat = {"formats": {k: v for k, v in formats.items() if k != "builtins"},
              **{k: v for k, v in runtime_compat.compatibility(formats).items() if k != "requires"}}
    with out.stage("Packaging"):
        if target.package == "mlc-ios":
            layout = ios.package(stage, target, ckpt, weights, lib, vram, out=out)
        else:
            layout = android.package(stage, target, weights, lib, vram, app_id, bundle_weights, model_url)
            if target.name == "harmonyos":
                layout["gguf"] = _harmonyos_next_gguf(stage, ckpt, model_id, out)
    workspace = (f"{lib_name}.metadata.json: largest memory_usage entry", lib.workspace_bytes)
    return {**layout, "model_lib": lib_name, "vram": vram, "compat": compat,
            "profile": ModelProfile.from_weights(weights, workspace)}


def _harmonyos_next_gguf(stage: Path, ckpt: Checkpoint, model_id: str, out: Output) -> str:
    """HarmonyOS NEXT has no MLC/TVM runtime; llama.cpp built with the OpenHarmony SDK reads GGUF."""
    from mcpm_mobile.formats.gguf_export import export_gguf

    gguf = stage / "harmonyos-next" / (re.sub(r"-q\d\w*-MLC$", "", model_id) + "-q4_0.gguf")
    gguf.parent.mkdir()
    export_gguf(ckpt, gguf, "q4_0", out=out)
    return str(gguf.relative_to(stage))


def _onnx(stage: Path, target: Target, ckpt: Checkpoint, model_id: str, app_id: str, bundle_weights: bool,
          context_window: int | None, out: Output) -> dict:
    from mcpm_mobile.devices import ModelProfile
    from mcpm_mobile.formats.onnx_export import export_onnx
    from mcpm_mobile.targets.android import package as android

    export_onnx(ckpt, stage / model_id, context_window=context_window, out=out)
    unmark(stage / model_id)
    layout = android.bundle(stage, stage / model_id, bundle_weights)
    android.write_push_script(stage, android.onnx_push_script(model_id, app_id))
    return {**layout, "profile": ModelProfile.from_config(ckpt.config, ONNX_QUANTIZATION, ckpt.dir)}


def _fit(profile, target: Target, check_device: str | None, context: int | None) -> list[dict]:
    """Fit on the target's reference phones; with ``check_device``, fail (exit 1) before anything lands."""
    from mcpm_mobile import devices

    if check_device:
        devices.require_fit(profile, check_device, context)
    return [v.to_dict() | {"line": v.line()} for v in devices.fit_report(profile, list(target.reference_phones),
                                                                          context)]
