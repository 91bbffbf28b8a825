"""`mcpm-mobile license`: the licence terms of a checkpoint or model family, and what to do before shipping."""
from __future__ import annotations

from pathlib import Path

import click

from mcpm_mobile.licenses.notice import before_shipping, render_markdown
from mcpm_mobile.licenses.registry import (UNKNOWN, detect_with_reason, families, family_terms, lookup, resolve,
                                           unknown_terms)
from mcpm_mobile.support.output import Output, output_options

UNKNOWN_EXIT = 2


def _terms_for(target: str, family: str | None) -> dict:
    if family:
        return resolve(family=family)
    if Path(target).is_dir():
        return resolve(model_dir=target)
    terms = lookup(target)
    if terms is not None:
        terms["detected_from"] = "family name"
        return terms
    # A Hugging Face id such as "01-ai/Yi-6B" names the family as a directory name would.
    found, reason = detect_with_reason({}, target)
    if found is None:
        return unknown_terms(f"'{target}' is neither a checkpoint directory nor a known family name")
    terms = family_terms(found)
    terms["detected_from"] = reason
    return terms


@click.command("license", epilog="Known families: " + ", ".join(families()))
@click.argument("target", metavar="MODEL_DIR|FAMILY")
@click.option("--model-family", metavar="FAMILY", help="Use this family's terms instead of detecting it.")
@output_options
def license_cmd(target: str, model_family: str | None, output: Output):
    """Show the licence terms of MODEL_DIR (a checkpoint) or FAMILY, and what to do before shipping."""
    terms = _terms_for(target, model_family)
    if terms["family"] == UNKNOWN:
        reason = terms["commercial"]["summary"]
        text = (f"Unknown model family for {target}. {reason}\nmcpm-mobile does not guess a licence: check the "
                f"licence on the model card, and if the model belongs to a known family pass --model-family with "
                f"one of: {', '.join(families())}.")
        output.result({"target": target, "family": None, "known": False, "reason": reason,
                       "known_families": families()}, text)
        click.get_current_context().exit(UNKNOWN_EXIT)
    output.result({"target": target, "family": terms["family"], "known": True, "terms": terms,
                   "before_shipping": before_shipping(terms)}, render_markdown(terms).rstrip())
