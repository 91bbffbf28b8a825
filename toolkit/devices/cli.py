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
from mcpm_mobile.support.output import Output, output_options

STATUS_STYLE = {"fits": "green", "tight": "yellow", "does not fit": "red", "no runtime": "red"}


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
                     help="Context tokens to reserve KV cache for [default: the artifact's, else 2048 on "
                          "Android/HarmonyOS and 1024 on iOS]."),
        click.option("--quantization", type=click.Choice(list(QUANTIZATIONS)), default=None,
                     help="For --preset or a Hugging Face checkpoint [default: q4f16_1]."),
        click.option("--preset", type=click.Choice(list(MODEL_PRESETS)), default=None,
                     help="A known model instead of --model [default: minicpm-2b]."),
        click.option("--model", type=click.Path(path_type=Path), default=None, metavar="DIR|ARTIFACT",
                     help="Checkpoint (or Hub id org/name[@rev]), quantized weights, built package or compiled library."),
    ]
    for option in options:
        call = option(call)
    return call


def _profile(model: Path | None, preset: str | None, quantization: str | None) -> ModelProfile:
    if model and preset:
        raise MCPMError("give --model or --preset, not both")
    if model:
        from mcpm_mobile.model.hub import checkpoint_dir

        model = checkpoint_dir(model, Output(quiet=True), weights=False)
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
    lead = v.speed.lead
    if not lead:
        return ""
    where = "" if lead.where == "this phone" else ", same SoC"
    return f"{lead.tps:.1f} ({lead.runtime}{where})"


def _range(low: float | None, high: float | None) -> str:
    return "—" if low is None else f"{low:.1f}–{high:.1f}"


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
def devices_cmd(os_name, min_ram, profile, context, runtime, no_entitlement, as_csv, plot, calibration, output):
    """Phones with the memory verdict and predicted decode speed for a model."""
    if as_csv and output.json:
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
        output.info(f"[green]✓[/green] wrote {plot}")
    if calibration:
        _show_calibration(cal, output, as_csv)
        return
    data = {"model": profile.to_dict(), "context": context, "runtime": runtime or "auto",
            "phones": [v.to_dict() for v in verdicts]}
    if as_csv:
        click.echo(_devices_csv(verdicts), nl=False)
    elif output.json:
        output.result(data)
    elif not output.quiet:
        _devices_table(verdicts, profile, runtime)


def _devices_table(verdicts: list[Verdict], profile: ModelProfile, runtime: str | None) -> None:
    short = speed.decode_context()
    backends = sorted({f"{v.speed.runtime}/{v.speed.backend}" for v in verdicts if v.speed.backend})
    contexts = sorted({v.context for v in verdicts})
    table = Table(title=f"{profile.name} {profile.quantization} at {'/'.join(map(str, contexts))} tokens of context; "
                        f"speed for {', '.join(backends) or runtime}", title_justify="left")
    for header, justify in [("Phone", "left"), ("OS", "left"), ("SoC", "left"), ("RAM", "right"),
                            ("Usable GB", "right"), ("Need GB", "right"), ("Ctx", "right"), ("Verdict", "left"),
                            ("Margin GB", "right"), ("Max ctx", "right"), ("Measured tok/s", "left"),
                            (f"Predicted tok/s @{short}", "right"), ("Roofline", "right")]:
        table.add_column(header, justify=justify)
    extrapolated = corrected = False
    for v in verdicts:
        eff = v.speed.efficiency
        mark = "~" if eff and eff.extrapolated else ""
        extrapolated |= bool(mark)
        star = "*" if v.phone.corrections else ""
        corrected |= bool(star)
        pred = f"{mark}{_range(v.speed.decode_low_short, v.speed.decode_high_short)}"
        table.add_row(v.phone.name + star, v.phone.os_label, v.phone.soc.name, f"{v.phone.ram_gb:g} GB",
                      _gb(v.usable_bytes), _gb(v.need_bytes), str(v.context),
                      f"[{STATUS_STYLE[v.status]}]{v.status}[/]", _gb(v.margin_bytes, sign=True),
                      str(v.max_context), _measured(v), pred,
                      "—" if v.speed.below_calibration else _tps(v.speed.ceiling_tps_short))
    console = _console()
    console.print(table)
    lines = [f"Weights {_gb(profile.weight_bytes)} GB ({profile.weight_source}); KV cache "
             f"{profile.kv_bytes_per_token / 1e6:.3f} MB per token; workspace {profile.workspace_bytes / 1e6:.0f} MB "
             f"({profile.workspace_source}).",
             "Usable: iOS jetsam limit with the increased-memory-limit entitlement; Android/HarmonyOS a share of "
             "physical RAM, and for MLC at most its 4352 MiB OpenCL budget (mlc-llm #2686). `check NAME` shows the "
             "basis.",
             f"Measured: the figure measured on this phone (or its SoC) with the runtime shown or a comparable one, "
             f"scaled to this model by bytes per token. Predicted: the range of the runtime's efficiency on this "
             f"GPU/CPU class times the roofline (peak bandwidth / bytes per token), at {short} tokens.",
             "How often the ranges hold: `mcpm-mobile devices --calibration`."]
    if extrapolated:
        lines.append("~ no measurement for this GPU/CPU class with this runtime: a wider range pooled over other "
                     "classes (see `check`).")
    if corrected:
        lines.append("* the MiniCPM README listed this phone with a wrong spec; corrected (see `check`).")
    for line in lines:
        console.print(line, highlight=False, style="dim")


def _devices_csv(verdicts: list[Verdict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["phone", "id", "os", "os_version", "soc", "ram_gb", "bandwidth_gbs", "usable_gb", "need_gb",
                     "status", "margin_gb", "max_context", "context", "runtime", "backend", "efficiency",
                     "extrapolated", "decode_low_short", "decode_high_short", "decode_tps_short", "decode_tps",
                     "roofline_tps", "measured_tps", "measured_runtime", "measured_source"])
    for v in verdicts:
        eff = v.speed.efficiency
        measured = v.speed.measured
        writer.writerow([
            v.phone.name, v.phone.id, v.phone.os, v.phone.os_version, v.phone.soc.name, v.phone.ram_gb,
            v.phone.bandwidth_gbs, f"{v.usable_bytes / 1e9:.3f}", f"{v.need_bytes / 1e9:.3f}", v.status,
            f"{v.margin_bytes / 1e9:.3f}", v.max_context, v.context, v.speed.runtime, v.speed.backend or "",
            f"{eff.value:.4f}" if eff else "", eff.extrapolated if eff else "",
            _csv_num(v.speed.decode_low_short), _csv_num(v.speed.decode_high_short),
            _csv_num(v.speed.decode_tps_short), _csv_num(v.speed.decode_tps), _csv_num(v.speed.ceiling_tps_short),
            ";".join(f"{m.tps:.2f}" for m in measured), ";".join(m.runtime for m in measured),
            ";".join(m.source for m in measured)])
    return buf.getvalue()


def _csv_num(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:+.0%}"


def _show_calibration(cal: speed.Calibration, output, as_csv: bool) -> None:
    if output.json:
        output.result({"rows": cal.rows, "classes": cal.classes, "summary": cal.summary})
        return
    if as_csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(cal.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(cal.rows)
        click.echo(buf.getvalue(), nl=False)
        return
    if output.quiet:
        return
    console = _console()
    table = Table(title=f"Speed ranges on the measured rows (decode at {cal.summary['context_tokens']} tokens); "
                        "leave-one-source-out drops every row of a source and refits", title_justify="left")
    for header in ["Device", "Runtime/backend", "Class", "Model", "Source", "Measured", "Eff",
                   "Range in sample", "Range without its source", "In?"]:
        table.add_column(header, justify="left" if header in ("Device", "Runtime/backend", "Class", "Model", "Source")
                         else "right")
    for r in cal.rows:
        device = r["device"] + (" (not fitted)" if r["excluded"] else "")
        inside = "—" if r["excluded"] else ("yes" if r["loso_inside"] else "[red]no[/]")
        table.add_row(device, f"{r['runtime']}/{r['backend']}", r["class"], f"{r['model']} {r['quantization']}",
                      f"{r['source_id']} ({r['date']})", f"{r['measured_tps']:g}", f"{r['implied_efficiency']:.3f}",
                      _range(r["in_sample_low"], r["in_sample_high"]), _range(r["loso_low"], r["loso_high"]), inside)
    console.print(table)
    classes = Table(title="Efficiency per runtime, backend and hardware class (share of peak bandwidth)",
                    title_justify="left")
    for header in ["Runtime", "Backend", "Class", "Devices", "Sources", "Centre", "Measured", "Range shown"]:
        classes.add_column(header)
    for c in cal.classes:
        classes.add_row(c["runtime"], c["backend"], c["class"], str(c["rows"]), str(c["sources"]),
                        f"{c['efficiency']:.3f}", f"{c['min']:.3f}–{c['max']:.3f}",
                        f"{c['low']:.3f}–{c['high']:.3f}")
    console.print(classes)
    s = cal.summary
    for label, key in [("Leave-one-source-out", "leave_one_source_out"), ("In sample", "in_sample")]:
        e = s[key]
        console.print(f"{label}: {e['inside']} of {e['rows']} measured rows ({e['inside_share']:.0%}) inside the "
                      f"range shown (median range high/low {e['median_range_ratio']:.1f}x); centre error median "
                      f"{e['median_abs_error']:.0%}, mean {e['mean_abs_error']:.0%}, max {e['max_abs_error']:.0%} "
                      f"({s['sources']} sources)", highlight=False)
    if s["outside_loso"]:
        console.print("Outside the range shown without their source: " + ", ".join(s["outside_loso"]),
                      highlight=False, style="dim")
    pre = s["prefill"]
    console.print(f"Prefill: {pre.get('note') or str(pre['rows']) + ' rows'}"
                  + (f" (bug reports not used: {', '.join(pre['skipped_bug_reports'])})"
                     if pre["skipped_bug_reports"] else ""), highlight=False, style="dim")


@click.command("check")
@click.argument("name", required=False)
@click.option("--soc", "soc_name", default=None, metavar="CHIP",
              help='A phone not in the table, by its chip: --soc "Snapdragon 8 Gen 3" --ram 12.')
@click.option("--ram", type=float, default=None, metavar="GB",
              help="RAM in GB: with --soc, the phone's; with NAME, one of its RAM options.")
@click.option("--os", "os_name", type=click.Choice(profiles.OSES), default=None,
              help="With --soc: the phone's OS [default: iOS for Apple chips, HarmonyOS for Kirin, else Android].")
@model_options
@output_options
@click.pass_context
def check_cmd(ctx, name, soc_name, ram, os_name, profile, context, runtime, no_entitlement, output):
    """Will a model run on one phone, in how much memory, how fast?

    NAME is a phone name, alias or model code ("Xiaomi 12 Pro", "xiaomi12pro", "s24+", HD1900, LE2100);
    a name sold with different chips (Galaxy S24: Exynos or Snapdragon) shows every variant. For a phone
    not in the table give --soc and --ram instead.

    Exit codes: 0 the model fits (or is tight) at the context asked (every variant); 1 it does not fit
    (the answer gives the largest context that does) or the runtime cannot run on the phone (an APK on
    HarmonyOS NEXT); 2 bad input: unknown or ambiguous name or chip,
    a RAM size the phone is not sold with, an unreadable model.
    """
    phones = _phones_for(name, soc_name, ram, os_name)
    verdicts = [evaluate(profile, p, context, None if runtime == "auto" else runtime, not no_entitlement)
                for p in phones]
    if len(verdicts) == 1:
        output.result(verdicts[0].to_dict(), text=check_text(verdicts[0]))
    else:
        output.result({"name": name, "variants": [v.to_dict() for v in verdicts]},
                      text=f"'{name}' is sold with different chips; each variant:\n\n"
                        + "\n\n".join(check_text(v) for v in verdicts))
    if not all(v.fits for v in verdicts):
        ctx.exit(1)


def _phones_for(name: str | None, soc_name: str | None, ram: float | None, os_name: str | None) -> list:
    if soc_name:
        if name:
            raise MCPMError("give a phone NAME or --soc, not both")
        if ram is None:
            raise MCPMError("--soc needs --ram GB (the phone's memory)")
        return [profiles.phone_from_soc(profiles.find_soc(soc_name), ram, os_name)]
    if not name:
        raise MCPMError("give a phone NAME, or --soc CHIP --ram GB for a phone not in the table")
    if os_name:
        raise MCPMError("--os goes with --soc; a named phone has its own OS")
    phones = profiles.find_phones(name)
    return [profiles.with_ram(p, ram) for p in phones] if ram is not None else phones


def check_text(v: Verdict) -> str:
    p, m, s, prof = v.phone, v.memory, v.speed, v.profile
    a = prof.arch
    short = min(speed.decode_context(), m.context)
    apk = {True: ", installs APKs", False: ", installs no APKs"}.get(p.installs_apk, "")
    others = sorted(set(p.ram_variants_gb) - {p.ram_gb})
    ram = f" (also sold with {', '.join(f'{r:g}' for r in others)} GB: --ram)" if others else ""
    lines = [f"{p.name} — {p.os_label}{apk}, {p.soc.name}, {p.ram_gb:g} GB {p.ram_type}{ram}, "
             f"{p.bandwidth_gbs:g} GB/s peak",
             f"Bandwidth: {p.bandwidth_basis}",
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
    if v.status == "no runtime":
        lines.append(f"  {s.note}")
    elif not v.fits and m.max_context >= 1:
        lines.append(f"  fits at {m.max_context} tokens or fewer: pass --context {m.max_context}")
    lines += ["", f"Speed ({s.runtime}{'/' + s.backend if s.backend else ''}), decode at {short} tokens"]
    seen = set()
    for x in s.measured:
        scaled = (f"{x.measured_tps:g} tok/s with {x.model} {x.quantization}, scaled by bytes per token x{x.scale:.2f}"
                  if x.scale != 1.0 else f"{x.quantization}")
        other = "" if x.leads else " [another runtime than the one asked]"
        lines.append(f"  measured   {x.tps:6.1f} tok/s  {x.where}, {x.runtime_label} ({x.runtime_version}){other}; "
                     f"{scaled}; {x.source}, {x.date}")
        for c in x.corrections:
            if c["readme_said"] not in seen:
                seen.add(c["readme_said"])
                lines.append(f"             the README listed {c['field']} '{c['readme_said']}': {c['reason']}")
    if s.decode_low_short is not None:
        e = s.efficiency
        lines.append(f"  predicted  {s.decode_low_short:.1f}-{s.decode_high_short:.1f} tok/s (centre "
                     f"{s.decode_tps_short:.1f}); {s.decode_low:.1f}-{s.decode_high:.1f} at {m.context} tokens")
        lines.append(f"             efficiency {e.low:.2f}-{e.high:.2f} of peak bandwidth: {e.basis}")
    else:
        lines.append(f"  predicted       —  ({s.note or 'no measured rows for this runtime/backend'})")
    if s.below_calibration:
        lines.append("  roofline        —  (bandwidth does not bound a model this small)")
    else:
        lines.append(f"  roofline   {s.ceiling_tps_short:6.1f} tok/s (efficiency 1: {p.bandwidth_gbs:g} GB/s peak / "
                     f"{_size(prof.weights_read_bytes + prof.kv_bytes(short))} per token)")
    lines.append(f"  prefill    {_tps(s.prefill_tps):>6s} tok/s  ({s.prefill_basis})" if s.prefill_tps
                 else f"  prefill         —  ({s.prefill_basis})")
    for c in p.corrections:
        lines.append(f"Correction: {c['field']} — the MiniCPM README said '{c['readme_said']}': {c['reason']}")
    lines += [f"Note: {n}" for n in v.notes]
    return "\n".join(lines)
