"""`mcpm-mobile dev`: developer tools (tiny random test checkpoints)."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options


@click.group("dev")
def dev_cmd():
    """Developer tools."""


@dev_cmd.command("tiny-checkpoint")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=8))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--kv-heads", type=click.IntRange(min=1), help="Fewer than --heads gives GQA. [default: heads]")
@click.option("--intermediate", type=click.IntRange(min=1), help="[default: 2.5 x hidden, rounded up to 32]")
@click.option("--vocab", default=512, show_default=True, type=click.IntRange(min=400))
@click.option("--tied/--untied", default=True, show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--shards", default=1, show_default=True, type=click.IntRange(min=1), help="Safetensors files.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-position", default=512, show_default=True, type=click.IntRange(min=16),
              help="max_position_embeddings.")
@click.option("--rope-scaling", type=click.Choice(["longrope"]),
              help="Add MiniCPM4-style LongRoPE factors (short 1 to 100, long 2 to 20).")
@click.option("--original-max-position", type=click.IntRange(min=2),
              help="LongRoPE's original_max_position_embeddings; below --max-position selects the long factors. "
                   "[default: max-position]")
@click.option("--force", is_flag=True)
@output_options
def tiny_checkpoint(out_dir, layers, hidden, heads, kv_heads, intermediate, vocab, tied, dtype, shards, seed,
                    max_position, rope_scaling, original_max_position, force, output):
    """Write a random MiniCPM checkpoint in Hugging Face layout (deterministic; for tests and demos).

    Its config.json names it mcpm-mobile/tiny-minicpm; every command that meets it says that its
    output is noise."""
    from mcpm_mobile.errors import MCPMError
    from mcpm_mobile.model.tiny import write_tiny_checkpoint

    if hidden % heads or heads % (kv_heads or heads):
        raise MCPMError(f"--hidden {hidden}, --heads {heads}, --kv-heads {kv_heads}: hidden must divide by heads "
                        "and heads by kv-heads")
    if original_max_position is not None and rope_scaling is None:
        raise MCPMError("--original-max-position needs --rope-scaling longrope")
    if original_max_position is not None and original_max_position > max_position:
        raise MCPMError(f"--original-max-position {original_max_position} exceeds --max-position {max_position}")
    if rope_scaling and (hidden // heads) % 2:
        raise MCPMError(f"--rope-scaling needs an even head dimension (hidden / heads = {hidden // heads})")
    path = write_tiny_checkpoint(out_dir, layers, hidden, heads, kv_heads, intermediate, vocab, tied, dtype, seed,
                                 shards, max_position, rope_scaling, original_max_position, force=force)
    output.result({"output": str(path), "layers": layers, "hidden": hidden, "vocab": vocab, "tied": tied,
                   "dtype": dtype, "seed": seed, "max_position": max_position, "rope_scaling": rope_scaling,
                   "original_max_position": original_max_position if rope_scaling else None},
                  f"Wrote {path} (random weights: a test checkpoint, not a language model)")
