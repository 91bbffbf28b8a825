"""``mcpm-mobile devices`` (the phone table, calibration, plot) and ``mcpm-mobile check NAME``."""
from __future__ import annotations

import csv
import functools
import io
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mcpm_mobile.devices import profiles, speed
from mcpm_mobile.devices.model_profile import MODEL_PRESETS, ModelProfile, model_profile_from_path
from mcpm_mobile.devices.verdict import Verdict, evaluate
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.model.quantization import QUANTIZATIONS
from mcpm_mobile.support.output import output_options

STATUS_STYLE = {"fits": "green", "tight": "yellow", "does not fit": "red"}


def model_options(func):
    """--model / --preset / --quantization (resolved into ``profile``), --context, --runtime, --no-entitlement."""

    @functools.wraps(func)
    def call(*args, model, preset, quantization, **kwargs):
        return func(*args, profile=_profile(model, preset, quantization), **kwargs)

    options = [
        click.option("--no-entitlement", "no_entitlement", is_flag=True,
                     help="Judge iPhones by the default app memory limit (no increased-memory-limit entitlement)."),
        click.option("--runtime", type=click.Choice(["auto", *speed.runtime_names()]), default="auto",
                     show_default=True, help="Runtime to predict speed for; auto: what mcpm-mobile builds (MLC)."),
        click.option("--context", type=click.IntRange(min=1), default=None,
                     help="Context tokens to reserve KV cache for [default: the artifact's, else 2048]."),
        click.option("--quantization", type=click.Choice(list(QUANTIZATIONS)), default=None,
                     help="For --preset or a Hugging Face checkpoint [default: q4f16_1]."),
        click.option("--preset", type=click.Choice(list(MODEL_PRESETS)), default=None,
                     help="A known model instead of --model [default: minicpm-2b]."),
        click.option("--model", type=click.Path(path_type=Path), default=None, metavar="DIR|ARTIFACT",
                     help="Checkpoint, quantized weights, built package directory or compiled library."),
    ]
    for option in options:
        call = option(call)
    return call


def _profile(model: Path | None, preset: str | None, quantization: str | None) -> ModelProfile:
    if model and preset:
        raise MCPMError("give --model or --preset, not both")
    if model:
        profile = model_profile_from_path(model, quantization)
        if quantization and profile.quantization != quantization:
            raise MCPMError(f"{model}: the artifact is {profile.quantization}; --quantization {quantization} "
                            "applies only to --preset and Hugging Face checkpoints")
        return profile
    return ModelProfile.from_preset(preset or "minicpm-2b", quantization or "q4f16_1")


def _console() -> Console:
    # Wide when piped so the table is not folded to 80 columns.
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200, soft_wrap=False)


def _gb(n: float | None, sign: bool = False) -> str:
    if n is None:
        return "—"
    return f"{n / 1e9:+.2f}" if sign else f"{n / 1e9:.2f}"


def _size(n: float, sign: bool = False) -> str:
    """GB for phone-sized figures, MB below 0.1 GB (tiny test models, workspaces)."""
    value, unit = (n / 1e9, "GB") if abs(n) >= 1e8 else (n / 1e6, "MB")
    return f"{value:+.2f} {unit}" if sign else f"{value:.2f} {unit}"


def _tps(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _measured(v: Verdict) -> str:
    found = v.speed.measured
    if not found:
        return ""
    values = sorted({m.tps for m in found})
    span = f"{values[0]:g}" if len(values) == 1 else f"{values[0]:g}–{values[-1]:g}"
    return f"{span} ({', '.join(sorted({m.runtime for m in found}))})"


@click.command("devices")
@click.option("--os", "os_name", type=click.Choice(profiles.OSES), default=None, help="Only phones with this OS.")
@click.option("--min-ram", type=click.FloatRange(min=0), default=None, metavar="GB",
              help="Only phones with at least this much RAM.")
@model_options
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.png",
              help="Also draw predicted vs measured speed and memory need vs usable memory.")
@click.option("--calibration", is_flag=True, help="Show the speed model's in-sample and leave-one-out error.")
@output_options
def devices_cmd(os_name, min_ram, profile, context, runtime, no_entitlement, as_csv, plot, calibration, out):
    """Phones with the memory verdict and predicted decode speed for a model."""
    if as_csv and out.json:
        raise MCPMError("choose one of --json and --csv")
    chosen = profiles.select(os_name, min_ram)
    if not chosen and not calibration:
        raise MCPMError("no phone matches these filters", exit_code=1)
    runtime = None if runtime == "auto" else runtime
    verdicts = [evaluate(profile, p, context, runtime, not no_entitlement) for p in chosen]
    cal = speed.calibration()
    if plot:
        from mcpm_mobile.devices.plot import draw

        draw(plot, verdicts, cal, profile)
        out.info(f"[green]✓[/green] wrote {plot}")
    if calibration:
        _show_calibration(cal, out, as_csv)
        return
    ctx = verdicts[0].context
    data = {"model": profile.to_dict(), "context": ctx, "runtime": runtime or "auto",
            "phones": [v.to_dict() for v in verdicts]}
    if as_csv:
        click.echo(_devices_csv(verdicts), nl=False)
    elif out.json:
        out.result(data)
    elif not out.quiet:
        _devices_table(verdicts, profile, ctx, runtime)


def _devices_table(verdicts: list[Verdict], profile: ModelProfile, ctx: int, runtime: str | None) -> None:
    short = min(speed.decode_context(), ctx)
    backends = sorted({f"{v.speed.runtime}/{v.speed.backend}" for v in verdicts if v.speed.backend})
    table = Table(title=f"{profile.name} {profile.quantization} at {ctx} tokens of context; speed for "
                        f"{', '.join(backends) or runtime}", title_justify="left")
    for header, justify in [("Phone", "left"), ("OS", "left"), ("SoC", "left"), ("RAM", "right"),
                            ("Usable GB", "right"), ("Need GB", "right"), ("Verdict", "left"),
                            ("Margin GB", "right"), ("Max ctx", "right"), (f"tok/s @{short} / @{ctx}", "right"),
                            ("Roofline", "right"), ("Measured tok/s", "left")]:
        table.add_column(header, justify=justify)
    extrapolated = corrected = False
    for v in verdicts:
        eff = v.speed.efficiency
        mark = "~" if eff and eff.extrapolated else ""
        extrapolated |= bool(mark)
        star = "*" if v.phone.corrections else ""
        corrected |= bool(star)
        pred = (f"{mark}{_tps(v.speed.decode_tps_short)} / {_tps(v.speed.decode_tps)}"
                if v.speed.decode_tps else "—")
        table.add_row(v.phone.name + star, v.phone.os_label, v.phone.soc.name, f"{v.phone.ram_gb:g} GB",
                      _gb(v.usable_bytes), _gb(v.need_bytes),
                      f"[{STATUS_STYLE[v.status]}]{v.status}[/]", _gb(v.margin_bytes, sign=True),
                      str(v.max_context), pred, _tps(v.speed.ceiling_tps_short), _measured(v))
    console = _console()
    console.print(table)
    lines = [f"Weights {_gb(profile.weight_bytes)} GB ({profile.weight_source}); KV cache "
             f"{profile.kv_bytes_per_token / 1e6:.3f} MB per token; workspace {profile.workspace_bytes / 1e6:.0f} MB "
             f"({profile.workspace_source}).",
             "Usable: iOS jetsam limit with the increased-memory-limit entitlement; Android/HarmonyOS a share of "
             "physical RAM (no per-app cap). `mcpm-mobile check NAME` shows the basis.",
             f"Speed: predicted decode at {short} and {ctx} tokens for the runtime shown (default: MLC as "
             "mcpm-mobile builds it); roofline = peak bandwidth / bytes per token. Measured figures come from "
             "the runtime named beside them (compare with --runtime).",
             "Error of the speed model: `mcpm-mobile devices --calibration`."]
    if extrapolated:
        lines.append("~ efficiency extrapolated: no measurement for this GPU/CPU class with this runtime.")
    if corrected:
        lines.append("* the MiniCPM README listed this phone with a wrong spec; corrected (see `check`).")
    for line in lines:
        console.print(line, highlight=False, style="dim")


def _devices_csv(verdicts: list[Verdict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["phone", "id", "os", "os_version", "soc", "ram_gb", "bandwidth_gbs", "usable_gb", "need_gb",
                     "status", "margin_gb", "max_context", "context", "runtime", "backend", "efficiency",
                     "extrapolated", "decode_tps_short", "decode_tps", "roofline_tps", "measured_tps",
                     "measured_runtime"])
    for v in verdicts:
        eff = v.speed.efficiency
        measured = v.speed.measured
        writer.writerow([
            v.phone.name, v.phone.id, v.phone.os, v.phone.os_version, v.phone.soc.name, v.phone.ram_gb,
            v.phone.bandwidth_gbs, f"{v.usable_bytes / 1e9:.3f}", f"{v.need_bytes / 1e9:.3f}", v.status,
            f"{v.margin_bytes / 1e9:.3f}", v.max_context, v.context, v.speed.runtime, v.speed.backend or "",
            f"{eff.value:.4f}" if eff else "", eff.extrapolated if eff else "",
            _csv_num(v.speed.decode_tps_short), _csv_num(v.speed.decode_tps), _csv_num(v.speed.ceiling_tps_short),
            ";".join(f"{m.tps:g}" for m in measured), ";".join(m.runtime for m in measured)])
    return buf.getvalue()


def _csv_num(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:+.0%}"


def _show_calibration(cal: speed.Calibration, out, as_csv: bool) -> None:
    if out.json:
        out.result({"rows": cal.rows, "classes": cal.classes, "summary": cal.summary})
        return
    if as_csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(cal.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(cal.rows)
        click.echo(buf.getvalue(), nl=False)
        return
    if out.quiet:
        return
    console = _console()
    table = Table(title=f"Speed model on the measured rows (decode at {cal.summary['context_tokens']} tokens)",
                  title_justify="left")
    for header in ["Device", "SoC", "Runtime/backend", "Class", "Model", "GB/s", "GB/token", "Measured",
                   "Implied eff", "In-sample", "err", "Leave-one-out", "err"]:
        table.add_column(header, justify="left" if header in ("Device", "SoC", "Runtime/backend", "Class", "Model")
                         else "right")
    for r in cal.rows:
        device = r["device"] + (" (dup, not fitted)" if r["excluded"] else "")
        table.add_row(device, r["soc"], f"{r['runtime']}/{r['backend']}", r["class"],
                      f"{r['model']} {r['quantization']}", f"{r['bandwidth_gbs']:g}",
                      f"{r['bytes_per_token'] / 1e9:.2f}", f"{r['measured_tps']:g}", f"{r['implied_efficiency']:.3f}",
                      _tps(r["in_sample_tps"]), _pct(r["in_sample_error"]), _tps(r["loo_tps"]), _pct(r["loo_error"]))
    console.print(table)
    classes = Table(title="Fitted efficiency per runtime, backend and hardware class", title_justify="left")
    for header in ["Runtime", "Backend", "Class", "Rows", "Efficiency", "Range"]:
        classes.add_column(header)
    for c in cal.classes:
        classes.add_row(c["runtime"], c["backend"], c["class"], str(c["rows"]), f"{c['efficiency']:.3f}",
                        f"{c['min']:.3f}–{c['max']:.3f}")
    console.print(classes)
    s = cal.summary
    for label, key in [("In-sample", "in_sample"), ("Leave-one-out", "leave_one_out")]:
        e = s[key]
        console.print(f"{label:14s} over {e['rows']} rows: mean |error| {e['mean_abs_error']:.1%}, median "
                      f"{e['median_abs_error']:.1%}, max {e['max_abs_error']:.1%}, "
                      f"RMS log error {e['rms_log_error']:.3f}", highlight=False)
    if s["rows_without_loo_prediction"]:
        console.print("No leave-one-out prediction (only row of its runtime/backend): "
                      + ", ".join(s["rows_without_loo_prediction"]), highlight=False, style="dim")


@click.command("check")
@click.argument("name")
@model_options
@output_options
@click.pass_context
def check_cmd(ctx, name, profile, context, runtime, no_entitlement, out):
    """Will a model run on one phone? Exit 0 if it fits, 1 if not, 2 on bad input.

    NAME is a phone name, alias or model code ("Xiaomi 12 Pro", "xiaomi12pro", HD1900, LE2100, M182Q).
    """
    phone = profiles.find_phone(name)
    v = evaluate(profile, phone, context, None if runtime == "auto" else runtime, not no_entitlement)
    out.result(v.to_dict(), text=check_text(v))
    if not v.fits:
        ctx.exit(1)


def check_text(v: Verdict) -> str:
    p, m, s, prof = v.phone, v.memory, v.speed, v.profile
    a = prof.arch
    short = min(speed.decode_context(), m.context)
    lines = [f"{p.name} — {p.os_label}, {p.soc.name}, {p.ram_gb:g} GB {p.ram_type}, {p.bandwidth_gbs:g} GB/s peak",
             f"Model: {prof.describe()}, context {m.context} tokens", "", "Memory"]
    rows = [("weights", m.weights, prof.weight_source),
            (f"KV cache ({m.context} tokens)", m.kv_cache,
             f"{a.num_hidden_layers} layers x 2 x {a.num_key_value_heads} kv heads x {a.head_dim} x {m.context} "
             f"x {prof.kv_dtype_bytes} B"),
            ("workspace", m.workspace, prof.workspace_source),
            ("runtime + app", m.overhead, "TVM runtime, GPU driver, tokenizer, app (estimate)"),
            ("total need", m.need, ""),
            ("usable", m.usable.bytes, m.usable.basis)]
    for label, value, basis in rows:
        lines.append(f"  {label:24s} {_size(value):>10s}  {basis}".rstrip())
    lines.append(f"  {'margin':24s} {_size(m.margin, sign=True):>10s}")
    limit = " (the model's training context)" if m.max_context_limited_by_model else ""
    lines.append(f"  verdict: {v.status.upper()}; largest context that fits: {m.max_context} tokens{limit}")
    lines += ["", f"Speed ({s.runtime}{'/' + s.backend if s.backend else ''})"]
    if s.decode_tps is not None:
        lines.append(f"  decode     {s.decode_tps_short:6.1f} tok/s at {short} tokens, {s.decode_tps:.1f} at "
                     f"{m.context}  (efficiency {s.efficiency.value:.2f}: {s.efficiency.basis})")
    else:
        lines.append(f"  decode     no prediction: {s.note or 'no measured rows for this runtime/backend'}")
    lines.append(f"  roofline   {s.ceiling_tps_short:6.1f} tok/s at {short} tokens (efficiency 1: peak bandwidth / "
                 f"{(prof.weights_read_bytes + prof.kv_bytes(short)) / 1e9:.2f} GB per token)")
    lines.append(f"  prefill    {_tps(s.prefill_tps):>6s} tok/s  ({s.prefill_basis})" if s.prefill_tps
                 else f"  prefill         —  ({s.prefill_basis})")
    seen = set()
    for x in s.measured:
        lines.append(f"  measured   {x.tps:6.1f} tok/s  ({x.runtime}, {x.quantization}; {x.source})")
        for c in x.corrections:
            if c["readme_said"] not in seen:
                seen.add(c["readme_said"])
                lines.append(f"             the README listed {c['field']} '{c['readme_said']}': {c['reason']}")
    for c in p.corrections:
        lines.append(f"Correction: {c['field']} — the MiniCPM README said '{c['readme_said']}': {c['reason']}")
    lines += [f"Note: {n}" for n in v.notes]
    return "\n".join(lines)
