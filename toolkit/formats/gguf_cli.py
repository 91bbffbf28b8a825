"""`mcpm-mobile export-gguf`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options

TYPES = ("q4_0", "q8_0", "f16", "f32")
FLAVORS = ("minicpm", "openbmb")


@click.command("export-gguf")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_path", required=True, type=click.Path(path_type=Path), help="GGUF file to write.")
@click.option("--type", "type_", default="q4_0", show_default=True, type=click.Choice(TYPES),
              help="Weight type (q4_0 keeps norms f32 and the output matrix q8_0).")
@click.option("--flavor", default="minicpm", show_default=True, type=click.Choice(FLAVORS),
              help="minicpm: llama.cpp / LLMFarm; openbmb: OpenBMB's LLMFarm fork (MiniCPM-2B constants only).")
@click.option("--llmfarm", "llmfarm_dir", type=click.Path(path_type=Path),
              help="Also write LLMFarm's chats/ and model_setting_templates/ JSON for this file into this folder.")
@click.option("--context", default=2048, show_default=True, type=click.IntRange(min=16),
              help="Context length in the LLMFarm settings (capped at max_position_embeddings).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@output_options
def export_gguf_cmd(model_dir, out_path, type_, flavor, llmfarm_dir, context, force, out):
    """Export a MiniCPM checkpoint (HF layout) as one GGUF file for llama.cpp and LLMFarm (iOS)."""
    from mcpm_mobile.formats.gguf_export import export_gguf
    from mcpm_mobile.model.config import MiniCPMConfig
    from mcpm_mobile.targets.ios import llmfarm

    if llmfarm_dir is not None:
        llmfarm.check_settings_paths(llmfarm_dir, force=force)  # before the long export
    s = export_gguf(model_dir, out_path, type_, flavor, out, force)
    if llmfarm_dir is not None:
        config = MiniCPMConfig.from_file(Path(model_dir) / "config.json")
        ctx = min(context, config.max_position_embeddings)
        s["llmfarm"] = [str(p) for p in llmfarm.write_settings(llmfarm_dir, out_path.name, config, ctx, force=force)]
    out.result(s, f"Wrote {s['output']}: {s['params']:,} params, {s['bytes'] / 1e6:.1f} MB, "
                  f"{s['bits_per_param']} bits/param ({s['type']}, arch {s['arch']}), {s['seconds']:.1f} s"
                  + "".join(f"\nWrote {p}" for p in s.get("llmfarm", [])))
