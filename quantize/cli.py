"""`mcpm-mobile quantize`."""
from pathlib import Path

import click

from mcpm_mobile.model.quantization import DEFAULT, QUANTIZATIONS
from mcpm_mobile.support.output import output_options


@click.command("quantize")
@click.argument("model_dir", type=click.Path(path_type=Path), metavar="MODEL_DIR|HUB_ID[@REV]")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Weights directory to write.")
@click.option("--quantization", default=DEFAULT, show_default=True, type=click.Choice(list(QUANTIZATIONS)))
@click.option("--context-window", type=click.IntRange(min=16), help="Context window recorded in mlc-chat-config.json.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), help="Prefill chunk size recorded in mlc-chat-config.json.")
@click.option("--thinking/--no-thinking", default=None,
              help="MiniCPM4.1's hybrid reasoning in the chat template. [default: the template's, thinking on]")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
@output_options
def quantize_cmd(model_dir, out_dir, quantization, context_window, prefill_chunk, thinking, force, out):
    """Quantize a MiniCPM checkpoint (HF layout, local or a Hub id) into MLC-format weights."""
    from mcpm_mobile.model.hub import checkpoint_dir
    from mcpm_mobile.quantize.convert import quantize_checkpoint

    model_dir = checkpoint_dir(model_dir, out)
    s = quantize_checkpoint(model_dir, out_dir, quantization, force, out, context_window, prefill_chunk, thinking)
    out.result(s, f"Wrote {s['output']}: {s['params']:,} params, {s['bytes'] / 1e6:.1f} MB in {s['shards']} shard(s), "
                  f"{s['bits_per_param']} bits/param, {s['seconds']:.1f} s")
