"""`mcpm-mobile compile`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options


@click.command("compile")
@click.argument("weights_dir", type=click.Path(path_type=Path))
@click.option("--target", default="host", show_default=True,
              help="'host' (a shared library for this machine), 'android' / 'android-adreno' (OpenCL, aarch64 .tar), "
                   "'harmonyos' (the same for aarch64-linux-ohos: no MLC/TVM runtime runs on HarmonyOS NEXT yet, so "
                   "nothing on a phone loads it; HarmonyOS 2-4 run the 'android' library), 'ios' (Metal, arm64 "
                   ".tar), 'cuda' (.so or .tar), or a JSON TVM target.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Library to write (default: WEIGHTS_DIR/minicpm-<quantization>-<target>.so, .tar for phones).")
@click.option("--context-window", type=click.IntRange(min=16), help="Override the context window size.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), help="Override the prefill chunk size.")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Override the maximum batch size.")
@click.option("--system-lib-prefix",
              help="Symbol prefix of a .tar system library (default: <model_type>_<quantization>_<hash>_); "
                   "the app loads it as system://<prefix without the trailing _>.")
@click.option("--cuda-arch", help="CUDA architecture for --target cuda (default: sm_90, H100).")
@output_options
def compile_cmd(weights_dir, target, output, context_window, prefill_chunk, max_batch_size, system_lib_prefix,
                cuda_arch, out):
    """Compile the model of WEIGHTS_DIR (from `mcpm-mobile quantize`) into a model library."""
    from mcpm_mobile.compiler.compile import compile_model

    s = compile_model(weights_dir, target, output, context_window, prefill_chunk, max_batch_size, out,
                      system_lib_prefix=system_lib_prefix, cuda_arch=cuda_arch)
    out.result(s, f"Wrote {s['output']} ({s['quantization']}, context {s['context_window_size']}, prefill chunk "
                  f"{s['prefill_chunk_size']}, batch {s['max_batch_size']}) in {s['seconds']['total_s']:.1f} s")
