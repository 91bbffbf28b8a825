"""`mcpm-mobile export-gguf` and `mcpm-mobile export-onnx`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options

GGUF_TYPES = ("q4_0", "q8_0", "f16", "f32")  # what gguf_export.TYPES writes (kept here: no gguf import)
GGUF_FLAVORS = ("minicpm", "openbmb")


@click.command("export-gguf")
@click.argument("model_dir", type=click.Path(path_type=Path), metavar="MODEL_DIR|HUB_ID[@REV]")
@click.option("-o", "--output", "out_path", required=True, type=click.Path(path_type=Path), help="GGUF file to write.")
@click.option("--type", "weight_type", default="q4_0", show_default=True, type=click.Choice(GGUF_TYPES),
              help="Weight type (q4_0 keeps norms f32 and the output matrix q8_0).")
@click.option("--flavor", default="minicpm", show_default=True, type=click.Choice(GGUF_FLAVORS),
              help="minicpm: llama.cpp / LLMFarm; openbmb: OpenBMB's LLMFarm fork (MiniCPM-2B constants only).")
@click.option("--llmfarm", "llmfarm_dir", type=click.Path(path_type=Path),
              help="Also write LLMFarm's chats/ and model_setting_templates/ JSON for this file into this folder.")
@click.option("--context", default=2048, show_default=True, type=click.IntRange(min=16),
              help="Context length in the LLMFarm settings (capped at max_position_embeddings).")
@click.option("--thinking/--no-thinking", default=None,
              help="MiniCPM4.1's thinking mode in LLMFarm's prompt format. [default: the template's, thinking on]")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@output_options
def export_gguf_cmd(model_dir, out_path, weight_type, flavor, llmfarm_dir, context, thinking, force, out):
    """Export a MiniCPM checkpoint (HF layout, local or a Hub id) as one GGUF file for llama.cpp and LLMFarm (iOS)."""
    from mcpm_mobile.formats import llmfarm
    from mcpm_mobile.formats.gguf_export import export_gguf
    from mcpm_mobile.model import chat_format
    from mcpm_mobile.model.checkpoint import Checkpoint
    from mcpm_mobile.model.hub import checkpoint_dir

    ckpt = Checkpoint(checkpoint_dir(model_dir, out))
    fmt = chat_format.detect(ckpt.dir, ckpt.config, thinking)  # refuse a bad switch before the export
    if llmfarm_dir is not None:
        llmfarm.check_settings_paths(llmfarm_dir, force=force)  # before the long export
    s = export_gguf(ckpt, out_path, weight_type, flavor, out, force)
    if llmfarm_dir is not None:
        ctx = min(context, ckpt.config.max_position_embeddings)
        s["llmfarm"] = [str(p) for p in llmfarm.write_settings(llmfarm_dir, out_path.name, ckpt.config, ctx,
                                                               chat_format=fmt, force=force)]
    out.result(s, f"Wrote {s['output']}: {s['params']:,} params, {s['bytes'] / 1e6:.1f} MB, "
                  f"{s['bits_per_param']} bits/param ({s['type']}, arch {s['arch']}), {s['seconds']:.1f} s"
                  + "".join(f"\nWrote {p}" for p in s.get("llmfarm", [])))


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
