"""`mcpm-mobile eval`."""
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options


def read_text(path: Path) -> str:
    from mcpm_mobile.errors import fail

    if not path.is_file():
        raise fail(path, "text file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise fail(path, f"not UTF-8 text (byte {e.start})")
    if not text.strip():
        raise fail(path, "is empty")
    return text


def format_report(r: dict) -> str:
    head = f"{'model':<34} {'what':<36} {'PPL':>9} {'KL mean':>10} {'KL p99':>10} {'top-1':>7} {'tok/s':>8}"
    lines = [f"{r['windows']} windows of {r['context']} tokens ({r['text_tokens']} text tokens), positions "
             f"{r['scored_positions']} scored, {r['threads']} threads", head, "-" * len(head)]
    f = r["float"]
    lines.append(f"{f['label']:<34} {f['kind']:<36} {f['perplexity']:>9.3f} {'':>10} {'':>10} {'':>7} "
                 f"{f['tokens_per_s'] or 0:>8.1f}")
    for a in r["artifacts"]:
        lines.append(f"{a['label'][:34]:<34} {a['kind'][:36]:<36} {a['perplexity']:>9.3f} {a['kl_mean']:>10.5f} "
                     f"{a['kl_p99']:>10.5f} {a['top1_agreement']:>7.2%} {a['tokens_per_s'] or 0:>8.1f}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--text", "text_file", required=True, type=click.Path(path_type=Path),
              help="UTF-8 text to evaluate on (at least one window of tokens).")
@click.option("--gguf", multiple=True, type=click.Path(path_type=Path), help="A GGUF file, run in llama.cpp.")
@click.option("--mlc", multiple=True, nargs=2, type=click.Path(path_type=Path), metavar="WEIGHTS_DIR LIB",
              help="MLC weights and their host library (`mcpm-mobile compile --target host`).")
@click.option("--onnx", multiple=True, type=click.Path(path_type=Path), help="An `export-onnx` directory.")
@click.option("--context", type=click.IntRange(min=8), help="Window length in tokens [default: 512, capped at "
                                                              "max_position_embeddings].")
@click.option("--windows", "max_windows", type=click.IntRange(min=1), help="Evaluate at most this many windows.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads per engine [default: all cores].")
@output_options
def eval_cmd(model_dir, text_file, gguf, mlc, onnx, context, max_windows, threads, output):
    """What quantization costs: MODEL_DIR's float model vs each artifact on a text.

    Reports perplexity, KL divergence of each artifact's next-token distribution from the float model's
    (mean, p99), top-1 agreement and tokens/s.
    """
    from mcpm_mobile.eval.evaluate import evaluate

    r = evaluate(model_dir, read_text(text_file), gguf=gguf, mlc=mlc, onnx=onnx, context=context,
                 max_windows=max_windows, threads=threads, text_source=text_file, output=output)
    output.result(r, format_report(r))
