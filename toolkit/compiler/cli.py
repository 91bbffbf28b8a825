"""`mcpm-mobile compile`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options


@click.command("compile")
@click.argument("weights_dir", type=click.Path(path_type=Path))
@click.option("--target", default="host", show_default=True,
              help="Compilation target: 'host' (a shared library for this machine).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Library to write (default: WEIGHTS_DIR/minicpm-<quantization>-<target>.so).")
@click.option("--context-window", type=click.IntRange(min=16), help="Override the context window size.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), help="Override the prefill chunk size.")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Override the maximum batch size.")
@output_options
def compile_cmd(weights_dir, target, output, context_window, prefill_chunk, max_batch_size, out):
    """Compile the model of WEIGHTS_DIR (from `mcpm-mobile quantize`) into a model library."""
    from mcpm_mobile.compiler.compile import compile_model

    compile_model(weights_dir, target, output, context_window, prefill_chunk, max_batch_size, out)
