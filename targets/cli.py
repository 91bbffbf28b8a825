"""`mcpm-mobile build` and `mcpm-mobile verify`."""
from pathlib import Path

import click

from mcpm_mobile.quantize.group import QUANTIZATIONS
from mcpm_mobile.support.output import output_options
from mcpm_mobile.targets.build import RUNTIMES, TARGETS


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--target", required=True, type=click.Choice(TARGETS),
              help="Phone platform. harmonyos: the Android package (HarmonyOS 2-4 install APKs) plus a GGUF for "
                   "llama.cpp on HarmonyOS NEXT, which has no MLC/TVM runtime.")
@click.option("-o", "--output", "dist", default=Path("dist"), show_default=True, type=click.Path(path_type=Path),
              help="Writes DIST/<target>/.")
@click.option("--quantization", default="q4f16_1", show_default=True, type=click.Choice(list(QUANTIZATIONS)))
@click.option("--runtime", default="mlc", show_default=True, type=click.Choice(RUNTIMES),
              help="mlc: TVM library + MLC weights; onnxruntime: INT4 ONNX for ONNX Runtime (Android).")
@click.option("--context-window", type=click.IntRange(min=16))
@click.option("--prefill-chunk", type=click.IntRange(min=1))
@click.option("--model-id", help="Folder and id of the model in the app. [default: <checkpoint>-<quantization>-MLC]")
@click.option("--app-id", help="Android application id for push-weights.sh. [default: ai.mlc.mlcchat; "
                               "onnxruntime: ai.onnxruntime.genai.demo]")
@click.option("--model-url", help="Where the app downloads the weights (else they are pushed or bundled).")
@click.option("--bundle-weights", is_flag=True,
              help="Android: also ship the weights inside the app, as Gradle install-time asset packs (android-app/).")
@click.option("--commercial", is_flag=True, help="The package is for commercial use: enforce the licence terms.")
@click.option("--license-grant", type=click.Path(path_type=Path), help="Written authorization to record.")
@click.option("--model-family", help="Licence family, when it cannot be detected from config.json.")
@click.option("--check-device", help="Fail unless this phone can run the result.")
@click.option("--force", is_flag=True, help="Replace an existing DIST/<target>.")
@output_options
def build(model_dir, target, dist, out, **options):
    """Quantize, compile and package MODEL_DIR for a phone."""
    from mcpm_mobile.targets.build import build as run_build

    s = run_build(model_dir, target, dist, out=out, **options)
    lines = [f"Built {s['output']} ({s['files']} files, {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s)"]
    lines += ["Fit on reference phones:"] + [f"  {v['line']}" for v in s.get("fit", [])]
    out.result(s, "\n".join(lines))


@click.command()
@click.argument("package_dir", type=click.Path(path_type=Path))
@click.option("--apk", type=click.Path(path_type=Path),
              help="Also check an APK/split Gradle built from the package's asset packs (STORED, aligned, unchanged).")
@output_options
def verify(package_dir, apk, out):
    """Re-check a built package: hashes, shards, configs as the apps parse them, library vs weights."""
    from mcpm_mobile.targets.verify import verify_apk, verify_package

    s = verify_package(package_dir)
    if apk:
        s["apk"] = verify_apk(package_dir, apk)
    out.result(s, f"OK {s['package']}: {s['files']} files, weights {', '.join(s['weights'])}, "
                  f"libraries {', '.join(s['libraries']) or 'none'}")


@click.command("inspect")
@click.argument("library", type=click.Path(path_type=Path))
@output_options
def inspect_cmd(library, out):
    """Read the runtime formats out of a model library (.tar/.so) and the oldest runtime that loads it."""
    from mcpm_mobile.targets.runtime_compat import compatibility, read_formats

    f = read_formats(library)
    c = compatibility(f)
    lines = [f"{library}",
             f"  VM executable    magic {f['vm_magic']}, version {f['vm_version']}",
             f"  attention tag    {', '.join(f['attention_backends']) or 'none'}",
             f"  KV-cache config  {f['kv_cache_config_entries']} entries, constructor {f['kv_cache_create_args']} args",
             f"  system library   {f['system_lib'] or 'none'} ({f['ffi_exports']} __tvm_ffi_ exports)",
             f"  runtime C API    {', '.join(f['ffi_imports'])}",
             f"  VM builtins      {', '.join(f['builtins'])}",
             f"Oldest TVM runtime: {c['oldest_tvm']}",
             f"Oldest mlc-llm:     {c['oldest_mlc_llm']}",
             "Check your app's TVM tree (mlc-llm: 3rdparty/tvm) for each:"]
    lines += [f"  {r['what']}: {r['check']}" for r in c["requires"]]
    out.result({"library": str(library), **f, **c}, "\n".join(lines))
