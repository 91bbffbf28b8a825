"""``mcpm-mobile build``: checkpoint -> quantize -> compile -> package, landing atomically in DIST/<target>/.

Runtimes: ``mlc`` (TVM model library + MLC weights; Android, HarmonyOS, iOS, the iOS package also
carries an LLMFarm GGUF) and ``onnxruntime`` (an INT4 ONNX decoder for ONNX Runtime Mobile /
onnxruntime-genai; Android).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.formats import chat_config
from mcpm_mobile.formats.tensor_cache import read_index
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.support.atomic import atomic_dir
from mcpm_mobile.support.output import Output
from mcpm_mobile.targets import deploy_docs, manifest
from mcpm_mobile.targets.model_lib import embedded_metadata, model_lib_name

TARGETS = ("android", "harmonyos", "ios")
RUNTIMES = ("mlc", "onnxruntime")
ONNX_QUANTIZATION = "q4f32_1"  # MatMulNBits block 32 with float32 scales: the same weights as MLC's q4f32_1


def default_model_id(ckpt: Checkpoint, quantization: str, runtime: str = "mlc") -> str:
    base = Path(ckpt.config.name_or_path).name or ckpt.dir.resolve().name
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "MiniCPM"
    return f"{base}-{quantization}-MLC" if runtime == "mlc" else f"{base}-int4-onnx"


def estimated_vram_bytes(weights_dir: Path, meta: dict) -> int:
    """MLC's estimate: parameter bytes + KV cache for the full context + the largest temporary workspace."""
    params = sum(shard["nbytes"] for shard in read_index(weights_dir)["records"])
    kv = meta["kv_cache"]
    dtype_bytes = 4 if meta["quantization"].startswith(("q4f32", "q0f32")) else 2
    kv_bytes = (kv["num_hidden_layers"] * 2 * kv["num_key_value_heads"] * kv["head_dim"]
                * meta["context_window_size"] * meta["max_batch_size"] * dtype_bytes)
    return int(params + kv_bytes + max(meta["memory_usage"].values(), default=0))


def build(model_dir: Path, target: str, dist: Path, quantization: str = "q4f16_1", runtime: str = "mlc",
          context_window: int | None = None, prefill_chunk: int | None = None, model_id: str | None = None,
          app_id: str | None = None, bundle_weights: bool = False, model_url: str | None = None,
          force: bool = False, commercial: bool = False, license_grant: Path | None = None,
          model_family: str | None = None, check_device: str | None = None, out: Output = Output()) -> dict:
    from mcpm_mobile import licenses
    from mcpm_mobile.targets.android import package as android

    if target not in TARGETS:
        raise MCPMError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    if runtime not in RUNTIMES:
        raise MCPMError(f"unknown runtime '{runtime}' (choose from {', '.join(RUNTIMES)})")
    if runtime == "onnxruntime" and target != "android":
        raise MCPMError("--runtime onnxruntime packages for --target android only")
    if check_device:
        from mcpm_mobile.devices import find_phone

        find_phone(check_device)  # an unknown name fails before any work
    ckpt = Checkpoint(model_dir)
    terms = licenses.resolve(model_dir=model_dir, family=model_family)
    record = (licenses.check_commercial(terms, license_grant) if commercial
              else licenses.license_record(terms, license_grant))
    if runtime == "onnxruntime":
        quantization = ONNX_QUANTIZATION
    model_id = model_id or default_model_id(ckpt, quantization, runtime)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", model_id):
        raise fail("--model-id", f"'{model_id}' must be letters, digits, '.', '_' or '-'")
    app_id = app_id or android.DEFAULT_APP_ID
    start = time.perf_counter()
    dest = Path(dist) / target
    info = {"target": target, "runtime": runtime, "model_id": model_id, "quantization": quantization,
            "source": {"path": str(Path(model_dir).resolve()), "sha256": ckpt.fingerprint()}, "license": record}
    versions = manifest.tool_versions()
    with atomic_dir(dest, force=force, inputs=(model_dir, license_grant), kind="package") as stage:
        if runtime == "onnxruntime":
            layout = _onnx(stage, model_dir, model_id, app_id, bundle_weights, context_window, out)
            doc = deploy_docs.onnxruntime(model_id, app_id, versions, bundle_weights, layout["assets"])
            profile_path, profile_quant = model_dir, ONNX_QUANTIZATION
        else:
            layout = _mlc(stage, ckpt, target, quantization, model_id, app_id, bundle_weights, model_url,
                          context_window, prefill_chunk, out)
            info.update(model_lib=layout["model_lib"], estimated_vram_bytes=layout["vram"])
            if target == "ios":
                doc = deploy_docs.ios(model_id, layout["model_lib"], layout["gguf"], versions)
                info["gguf"] = layout["gguf"]
            else:
                doc = deploy_docs.android(model_id, layout["model_lib"], app_id, target, versions, bundle_weights,
                                          layout["assets"])
            profile_path, profile_quant = stage, None
        (stage / "DEPLOY.md").write_text(doc, encoding="utf-8")
        for where in (stage, stage / layout["assets"]):
            licenses.write_notices(where, terms, grant=license_grant, commercial_use=commercial, model_dir=model_dir)
        fit = _fit(profile_path, profile_quant, target, check_device, context_window)
        written = manifest.write_manifest(stage, info)
    summary = {"output": str(dest), **info, "fit": fit, "files": len(written["files"]),
               "bytes": sum(f["size"] for f in written["files"]), "seconds": round(time.perf_counter() - start, 2)}
    if bundle_weights and target != "ios":
        out.info(f"[yellow]Weights bundled into {layout['assets']}/: the APK grows by "
                 f"{layout['bundled_weights_bytes'] / 1e6:.1f} MB, and the app must copy them out of the assets "
                 "before loading.[/yellow]")
    out.info(licenses.short_notice(terms, record))
    return summary


def _mlc(stage: Path, ckpt: Checkpoint, target: str, quantization: str, model_id: str, app_id: str,
         bundle_weights: bool, model_url: str | None, context_window: int | None, prefill_chunk: int | None,
         out: Output) -> dict:
    from mcpm_mobile.compiler.compile import compile_model
    from mcpm_mobile.quantize.convert import quantize_checkpoint
    from mcpm_mobile.targets.android import package as android
    from mcpm_mobile.targets.ios import package as ios

    if target == "ios":
        weights, lib_dir = ios.mlc_paths(stage, model_id)
    else:
        weights, lib_dir = stage / model_id, stage / "lib"
    quantize_checkpoint(ckpt.dir, weights, quantization, out=out, context_window=context_window,
                        prefill_chunk=prefill_chunk)
    chat = chat_config.read(weights)
    lib_name = model_lib_name(chat, target)
    lib_dir.mkdir(parents=True)
    lib = lib_dir / f"{lib_name}.tar"
    compile_model(weights, target=target, output=lib, system_lib_prefix=lib_name + "_", out=out)
    meta = embedded_metadata(lib)
    (lib_dir / f"{lib_name}.metadata.json").write_text(json.dumps(meta, indent=2))
    vram = estimated_vram_bytes(weights, meta)
    with out.stage("Packaging"):
        if target == "ios":
            layout = ios.package(stage, ckpt.dir, ckpt.config, model_id, lib_name, vram, chat["context_window_size"],
                                 out=out)
            layout["assets"] = layout["llmfarm"]
        else:
            layout = android.package(stage, target, model_id, lib_name, vram, chat, app_id, bundle_weights, model_url)
    return {**layout, "model_lib": lib_name, "vram": vram}


def _onnx(stage: Path, model_dir: Path, model_id: str, app_id: str, bundle_weights: bool,
          context_window: int | None, out: Output) -> dict:
    import shutil

    from mcpm_mobile.formats.onnx_export import export_onnx
    from mcpm_mobile.targets.android import package as android

    export_onnx(model_dir, stage / model_id, context_window=context_window, out=out)
    assets = stage / android.ASSETS["android"]
    assets.mkdir(parents=True)
    weights_bytes = sum(p.stat().st_size for p in (stage / model_id).rglob("*") if p.is_file())
    if bundle_weights:
        shutil.copytree(stage / model_id, assets / model_id)
    script = stage / "push-weights.sh"
    script.write_text(android.push_script(model_id, app_id))
    script.chmod(0o755)
    return {"assets": str(assets.relative_to(stage)), "bundled_weights_bytes": weights_bytes if bundle_weights else 0}


def _fit(profile_path: Path, quantization: str | None, target: str, check_device: str | None,
         context: int | None) -> list[dict]:
    """Fit on the target's reference phones; with ``check_device``, fail (exit 1) before anything lands."""
    from mcpm_mobile import devices

    profile = devices.model_profile_from_path(profile_path, quantization)
    if check_device:
        devices.require_fit(profile, check_device, context)
    return [v.to_dict() | {"line": v.line()} for v in devices.fit_report(profile, devices.reference_phones(target),
                                                                          context)]
