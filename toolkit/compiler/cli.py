"""`mcpm-mobile compile`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options
from mcpm_mobile.target import TARGETS

TARGET_HELP = ", ".join(f"'{t.name}' ({t.description}, {t.suffixes[0]})" for t in TARGETS.values())


@click.command("compile")
@click.argument("weights_dir", type=click.Path(path_type=Path))
@click.option("--target", default="host", show_default=True, help=f"{TARGET_HELP}, or a JSON TVM target.")
@click.option("-o", "--output", "out_path", type=click.Path(path_type=Path),
              help="Library to write (default: WEIGHTS_DIR/minicpm-<quantization>-<target>.so, .tar for phones).")
@click.option("--context-window", type=click.IntRange(min=16), help="Override the context window size.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), help="Override the prefill chunk size.")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Override the maximum batch size.")
@click.option("--system-lib-prefix",
              help="Symbol prefix of a .tar system library (default: <model_type>_<quantization>_<hash>_); "
                   "the app loads it as system://<prefix without the trailing _>.")
@click.option("--cuda-arch", help="CUDA architecture for --target cuda (default: sm_90, H100).")
@click.option("--force", is_flag=True, help="Replace an existing library (.so / .tar) at the output path.")
@output_options
def compile_cmd(weights_dir, target, out_path, context_window, prefill_chunk, max_batch_size, system_lib_prefix,
                cuda_arch, force, output):
    """Compile the model of WEIGHTS_DIR (from `mcpm-mobile quantize`) into a model library."""
    from mcpm_mobile.compiler.compile import compile_model
    from mcpm_mobile.formats.weights import Weights
    from mcpm_mobile.model.config import TEST_CHECKPOINT_NOTICE

    weights = Weights.read(weights_dir)
    lib = compile_model(weights, target, out_path, context_window, prefill_chunk, max_batch_size, output,
                        system_lib_prefix=system_lib_prefix, cuda_arch=cuda_arch, force=force)
    if weights.is_test_checkpoint:
        output.info(TEST_CHECKPOINT_NOTICE)
    m = lib.metadata
    s = {"output": str(lib.path), "target": m["mcpm"]["target"], "model_type": m["model_type"],
         "quantization": m["quantization"], "context_window_size": m["context_window_size"],
         "prefill_chunk_size": m["prefill_chunk_size"], "max_batch_size": m["max_batch_size"],
         "num_params": len(m["params"]), "tied": m["mcpm"]["tie_word_embeddings"],
         "system_lib_prefix": lib.system_lib_prefix, "seconds": lib.seconds}
    output.result(s, f"Wrote {s['output']} ({s['quantization']}, context {s['context_window_size']}, prefill chunk "
                  f"{s['prefill_chunk_size']}, batch {s['max_batch_size']}) in {s['seconds']['total_s']:.1f} s")


@click.command("inspect")
@click.argument("library", type=click.Path(path_type=Path))
@output_options
def inspect_cmd(library, output):
    """Read the runtime formats out of a model library (.tar/.so) and the oldest runtime that loads it."""
    from mcpm_mobile.compiler.runtime_compat import compatibility, read_formats

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
    output.result({"library": str(library), **f, **c}, "\n".join(lines))
