"""`mcpm-mobile run`: generate on the host with a compiled library."""
import json
import sys
from pathlib import Path

import click

from mcpm_mobile.support.output import output_options


@click.command("run")
@click.argument("weights_dir", type=click.Path(path_type=Path))
@click.option("--lib", required=True, type=click.Path(path_type=Path), help="Model library from `mcpm-mobile compile`.")
@click.option("--prompt", help="The user message (the checkpoint's chat template is applied).")
@click.option("--chat", is_flag=True, help="Interactive multi-turn chat on stdin (empty line or /exit quits).")
@click.option("--raw", is_flag=True, help="Feed the prompt as plain text, without the chat template.")
@click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(min=0))
@click.option("--temperature", type=click.FloatRange(min=0), help="0 = greedy (default: mlc-chat-config.json).")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), help="Nucleus sampling mass.")
@click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Random seed for sampling.")
@click.option("--thinking/--no-thinking", default=None,
              help="MiniCPM4.1's hybrid reasoning. [default: as built, i.e. the template's default, thinking on]")
@output_options
def run_cmd(weights_dir, lib, prompt, chat, raw, max_tokens, temperature, top_p, repetition_penalty, seed, thinking,
            out):
    """Generate text on this machine with WEIGHTS_DIR and a compiled --lib."""
    from mcpm_mobile.errors import MCPMError
    from mcpm_mobile.runtime.engine import Engine

    if not chat and prompt is None:
        raise MCPMError("give --prompt TEXT or --chat")
    if prompt is not None:
        _check_text(prompt, "--prompt")
    with out.stage("Loading the model"):
        engine = Engine(weights_dir, lib)
    if thinking is not None:
        from mcpm_mobile.model.chat_format import from_conv_template

        engine.conv = from_conv_template(engine.conv, thinking).mlc_conv_template()
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                  repetition_penalty=repetition_penalty, seed=seed, chat_template=not raw)
    stream = not out.json and not out.quiet

    def on_text(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    def report(r) -> None:
        t = r.timings
        if stream:
            sys.stdout.write("\n")
        if not out.json:
            click.echo(f"[prefill {t.prefill_tokens} tokens, {t.prefill_tokens_per_s:.2f} tok/s | decode "
                       f"{t.decode_tokens} tokens, {t.decode_tokens_per_s:.2f} tok/s | {r.finish_reason}]", err=True)

    if not chat:
        r = engine.generate(prompt, on_text=on_text if stream else None, **kwargs)
        report(r)
        if out.json:
            click.echo(json.dumps(r.to_dict(), ensure_ascii=False, indent=2))
        elif out.quiet:
            click.echo(r.text)
        return
    turns = []
    first = True
    if prompt:
        pending = [prompt]
    else:
        pending = []
    while True:
        if pending:
            message = pending.pop(0)
        else:
            try:
                message = input("> " if sys.stdin.isatty() else "")
            except EOFError:
                break
        if not message.strip() or message.strip() in ("/exit", "/quit"):
            break
        _check_text(message, "stdin")
        try:
            r = engine.generate(message, on_text=on_text if stream else None, continue_conversation=not first, **kwargs)
        except MCPMError as e:
            if "context window" not in str(e) or first:
                raise
            click.echo("(context window full: starting a new conversation) ", err=True)
            r = engine.generate(message, on_text=on_text if stream else None, **kwargs)
        first = False
        report(r)
        if out.quiet and not out.json:
            click.echo(r.text)
        turns.append(r.to_dict())
    if out.json:
        click.echo(json.dumps({"turns": turns}, ensure_ascii=False, indent=2))


def _check_text(text: str, where: str) -> None:
    from mcpm_mobile.errors import fail

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(where, "is not valid UTF-8 text")
