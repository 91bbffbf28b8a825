"""`mcpm-mobile build` and `mcpm-mobile verify`."""
from pathlib import Path

import click

from mcpm_mobile.quantize.group import QUANTIZATIONS
from mcpm_mobile.support.output import output_options
from mcpm_mobile.targets.build import RUNTIMES, TARGETS


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path), metavar="MODEL_DIR|HUB_ID[@REV]")
@click.option("--target", required=True, type=click.Choice(TARGETS), help="Phone platform to package for.")
@click.option("-o", "--output", "dist", default=Path("dist"), show_default=True, type=click.Path(path_type=Path),
              help="Writes DIST/<target>/.")
@click.option("--quantization", default="q4f16_1", show_default=True, type=click.Choice(list(QUANTIZATIONS)))
@click.option("--runtime", default="mlc", show_default=True, type=click.Choice(RUNTIMES),
              help="mlc: TVM library + MLC weights; onnxruntime: INT4 ONNX for ONNX Runtime (Android).")
@click.option("--context-window", type=click.IntRange(min=16))
@click.option("--prefill-chunk", type=click.IntRange(min=1))
@click.option("--model-id", help="Folder and id of the model in the app. [default: <checkpoint>-<quantization>-MLC]")
@click.option("--app-id", help="Android application id for push-weights.sh. [default: ai.mlc.mlcchat]")
@click.option("--model-url", help="Where the app downloads the weights (else they are pushed or bundled).")
@click.option("--bundle-weights", is_flag=True, help="Put the weights into the APK/HAP assets too.")
@click.option("--commercial", is_flag=True, help="The package is for commercial use: enforce the licence terms.")
@click.option("--license-grant", type=click.Path(path_type=Path), help="Written authorization to record.")
@click.option("--model-family", help="Licence family, when it cannot be detected from config.json.")
@click.option("--check-device", help="Fail unless this phone can run the result.")
@click.option("--thinking/--no-thinking", default=None,
              help="MiniCPM4.1's hybrid reasoning in the chat template. [default: the template's, thinking on]")
@click.option("--force", is_flag=True, help="Replace an existing DIST/<target>.")
@output_options
def build(model_dir, target, dist, out, **options):
    """Quantize, compile and package MODEL_DIR for a phone."""
    from mcpm_mobile.model.hub import checkpoint_dir
    from mcpm_mobile.targets.build import build as run_build

    model_dir = checkpoint_dir(model_dir, out)
    s = run_build(model_dir, target, dist, out=out, **options)
    lines = [f"Built {s['output']} ({s['files']} files, {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s)"]
    lines += ["Fit on reference phones:"] + [f"  {v['line']}" for v in s.get("fit", [])]
    out.result(s, "\n".join(lines))


@click.command()
@click.argument("package_dir", type=click.Path(path_type=Path))
@output_options
def verify(package_dir, out):
    """Re-check a built package: hashes, shards, configs, library vs weights."""
    from mcpm_mobile.targets.verify import verify_package

    s = verify_package(package_dir)
    out.result(s, f"OK {s['package']}: {s['files']} files, weights {', '.join(s['weights'])}, "
                  f"libraries {', '.join(s['libraries']) or 'none'}")
