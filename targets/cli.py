"""`mcpm-mobile build` and `mcpm-mobile verify`."""
from pathlib import Path

import click

from mcpm_mobile.model.quantization import DEFAULT, QUANTIZATIONS
from mcpm_mobile.support.output import output_options
from mcpm_mobile.target import PACKAGED
from mcpm_mobile.targets.build import RUNTIMES


@click.command("build")
@click.argument("model_dir", type=click.Path(path_type=Path), metavar="MODEL_DIR|HUB_ID[@REV]")
@click.option("--target", required=True, type=click.Choice(PACKAGED),
              help="Phone platform. harmonyos: the Android package (HarmonyOS 2-4 install APKs) plus a GGUF for "
                   "llama.cpp on HarmonyOS NEXT, which has no MLC/TVM runtime.")
@click.option("-o", "--output", "out_dir", default=Path("dist"), show_default=True, type=click.Path(path_type=Path),
              help="Writes OUTPUT/<target>/.")
@click.option("--quantization", type=click.Choice(list(QUANTIZATIONS)),
              help=f"For --runtime mlc. [default: {DEFAULT}]")
@click.option("--runtime", default="mlc", show_default=True, type=click.Choice(RUNTIMES),
              help="mlc: TVM library + MLC weights; onnxruntime: INT4 ONNX for ONNX Runtime (Android).")
@click.option("--context-window", type=click.IntRange(min=16))
@click.option("--prefill-chunk", type=click.IntRange(min=1))
@click.option("--model-id", help="Folder and id of the model in the app. [default: <checkpoint>-<quantization>-MLC]")
@click.option("--app-id", help="Android application id for push-weights.sh. [default: ai.mlc.mlcchat; "
                               "onnxruntime: ai.onnxruntime.genai.demo]")
@click.option("--model-url", help="Where the app downloads the weights (else they are pushed; Android, HarmonyOS).")
@click.option("--bundle-weights", is_flag=True,
              help="Also ship the weights inside the app, as Gradle install-time asset packs (android-app/; "
                   "Android, HarmonyOS 2-4).")
@click.option("--commercial", is_flag=True, help="The package is for commercial use: enforce the licence terms.")
@click.option("--license-grant", type=click.Path(path_type=Path), help="Written authorization to record.")
@click.option("--model-family", help="Licence family, when it cannot be detected from config.json.")
@click.option("--check-device", help="Fail unless this phone can run the result.")
@click.option("--thinking/--no-thinking", default=None,
              help="MiniCPM4.1's hybrid reasoning in the chat template. [default: the template's, thinking on]")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT/<target>.")
@output_options
def build_cmd(model_dir, target, out_dir, out, **options):
    """Quantize, compile and package MODEL_DIR for a phone."""
    from mcpm_mobile.model.hub import checkpoint_dir
    from mcpm_mobile.targets.build import build

    model_dir = checkpoint_dir(model_dir, out)
    s = build(model_dir, target, out_dir, out=out, **options)
    lines = [f"Built {s['output']} ({s['files']} files, {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s)"]
    lines += ["Fit on reference phones:"] + [f"  {v['line']}" for v in s.get("fit", [])]
    out.result(s, "\n".join(lines))


@click.command("verify")
@click.argument("package_dir", type=click.Path(path_type=Path))
@click.option("--apk", type=click.Path(path_type=Path),
              help="Also check an APK/split Gradle built from the package's asset packs (STORED, aligned, unchanged).")
@output_options
def verify_cmd(package_dir, apk, out):
    """Re-check a built package: hashes, shards, configs as the apps parse them, library vs weights."""
    from mcpm_mobile.targets.package import Package

    package = Package.read(package_dir)
    s = package.verify()
    if apk:
        s["apk"] = package.verify_apk(apk)
    out.result(s, f"OK {s['package']}: {s['files']} files, weights {', '.join(s['weights'])}, "
                  f"libraries {', '.join(s['libraries']) or 'none'}")
