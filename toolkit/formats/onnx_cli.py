"""`mcpm-mobile export-onnx`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options


@click.command("export-onnx")
@click.argument("model_dir", type=click.Path(path_type=Path), metavar="MODEL_DIR|HUB_ID[@REV]")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory to write (model.onnx, model.onnx.data, genai_config.json, tokenizer).")
@click.option("--block-size", default=32, show_default=True, type=int,
              help="INT4 block size along the input dimension: 16, 32, 64, 128 or 256.")
@click.option("--accuracy-level", default=4, show_default=True, type=int,
              help="MatMulNBits compute type: 0 default, 1 fp32, 2 fp16, 3 bf16, "
                   "4 int8 activations (fastest on CPU).")
@click.option("--context-window", type=int,
              help="KV buffer length onnxruntime-genai allocates (search.max_length); "
                   "default min(max positions, 2048).")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@output_options
def export_onnx_cmd(model_dir, out_dir, block_size, accuracy_level, context_window, force, out):
    """Export a MiniCPM checkpoint (HF layout) to an INT4 ONNX decoder for onnxruntime(-genai)."""
    from mcpm_mobile.formats.onnx_export import export_onnx

    from mcpm_mobile.model.hub import checkpoint_dir

    model_dir = checkpoint_dir(model_dir, out)
    s = export_onnx(model_dir, out_dir, block_size, accuracy_level, force, out, context_window)
    out.result(s, f"Wrote {s['output']}: {s['model']} + {s['bytes'] / 1e6:.1f} MB of INT4 weights "
                  f"(block {s['block_size']}, accuracy level {s['accuracy_level']}), {s['seconds']:.1f} s")
