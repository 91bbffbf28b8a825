"""``devices --plot``: measured decode speed against the ranges shown, and memory need vs usable memory, in one PNG."""
from __future__ import annotations

from pathlib import Path

from mcpm_mobile.devices.model_profile import ModelProfile
from mcpm_mobile.devices.speed import Calibration
from mcpm_mobile.devices.verdict import Verdict
from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.support.atomic import PNG, atomic_file

STATUS_COLORS = {"fits": "#2e7d32", "tight": "#f9a825", "does not fit": "#c62828", "no runtime": "#6d4c41"}
RUNTIME_COLORS = ["#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#4e342e", "#ad1457", "#558b2f"]


def draw(path: Path, verdicts: list[Verdict], cal: Calibration, profile: ModelProfile) -> None:
    try:
        import matplotlib
    except ImportError:
        raise MCPMError("--plot needs matplotlib: pip install 'mcpm-mobile[plot]'")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = speed_rows(cal)
    height = max(7.0, 0.3 * max(len(rows), len(verdicts)) + 2.0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(17, height), dpi=100,
                                      gridspec_kw={"width_ratios": [1.05, 1], "wspace": 0.6})
    _speed_panel(left, rows, cal.summary)
    _memory_panel(right, verdicts, profile)
    contexts = "/".join(str(c) for c in sorted({v.context for v in verdicts})) or str(profile.default_context)
    fig.suptitle(f"mcpm-mobile device profiles: {profile.name} {profile.quantization}, {contexts}-token context",
                 fontsize=14, fontweight="bold")
    try:
        with atomic_file(path, force=True, magic=PNG) as tmp:  # replaces an earlier plot, nothing else
            fig.savefig(tmp, bbox_inches="tight", format="png")
    except OSError as e:
        raise fail(path, f"cannot write the plot: {e.strerror or e}")
    finally:
        plt.close(fig)


def speed_rows(cal: Calibration) -> list[dict]:
    """The fitted rows the speed panel draws, each with the range shown without its own source."""
    return sorted((r for r in cal.rows if not r["excluded"]), key=lambda r: (r["runtime"], r["measured_tps"]))


def _speed_panel(ax, rows: list[dict], summary: dict) -> None:
    """Per measured row: roofline bar, the range shown without the row's source (bar), and the measurement."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    runtimes = sorted({r["runtime"] for r in rows})
    color = {rt: RUNTIME_COLORS[i % len(RUNTIME_COLORS)] for i, rt in enumerate(runtimes)}
    ys = range(len(rows))
    ax.barh(ys, [r["roofline_tps"] for r in rows], color="#eeeeee", height=0.8, label="roofline (efficiency 1)")
    for y, r in zip(ys, rows):
        c = color[r["runtime"]]
        if r["loso_low"] is not None:
            ax.barh(y, r["loso_high"] - r["loso_low"], left=r["loso_low"], height=0.45, color=c, alpha=0.3)
        if r["in_sample_low"] is not None:
            ax.plot([r["in_sample_low"], r["in_sample_high"]], [y, y], color=c, lw=2.2, solid_capstyle="butt")
        ax.plot(r["measured_tps"], y, "D", color="black" if r["loso_inside"] else "#c62828", ms=5)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{r['device']} · {r['model']}" for r in rows], fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), rows):
        tick.set_color(color[r["runtime"]])
    ax.set_xscale("log")
    top = max(r["roofline_tps"] for r in rows) if rows else 10
    ax.set_xlim(0.3, top * 1.15)
    ax.xaxis.set_major_locator(FixedLocator([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
                                             if t < top * 1.15]))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("decode tokens/s (log scale)")
    loso = summary["leave_one_source_out"]
    ax.set_title(f"Decode speed: measured (◆, red if outside) vs the range shown\n"
                 f"dark line: range in sample; light bar: range without the row's source "
                 f"({loso['inside']}/{loso['rows']} = {loso['inside_share']:.0%} inside)", fontsize=10)
    handles = [plt_patch(color[rt], rt) for rt in runtimes]
    handles.append(plt_patch("#eeeeee", "roofline (efficiency 1)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=4, fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_ylim(-0.7, len(rows) - 0.3)


def _memory_panel(ax, verdicts: list[Verdict], profile: ModelProfile) -> None:
    """Per phone: usable memory (outline) against the stacked need; labels give verdict and speed."""
    verdicts = sorted(verdicts, key=lambda v: (v.usable_bytes, v.phone.name))
    ys = range(len(verdicts))
    gb = 1e9
    ax.barh(ys, [v.usable_bytes / gb for v in verdicts], height=0.78, color="none",
            edgecolor=[STATUS_COLORS[v.status] for v in verdicts], linewidth=1.6, label="usable by an app")
    left = [0.0] * len(verdicts)
    parts = [("weights", "#5c6bc0", lambda v: v.memory.weights),
             ("KV cache", "#26a69a", lambda v: v.memory.kv_cache),
             ("workspace + runtime", "#bdbdbd", lambda v: v.memory.workspace + v.memory.overhead)]
    for label, c, get in parts:
        widths = [get(v) / gb for v in verdicts]
        ax.barh(ys, widths, left=left, height=0.5, color=c, label=label)
        left = [a + b for a, b in zip(left, widths)]
    defaults = [(y, v.memory.usable.default_bytes / gb) for y, v in zip(ys, verdicts) if v.memory.usable.default_bytes]
    if defaults:
        ax.plot([x for _, x in defaults], [y for y, _ in defaults], "|", color="black", ms=12, mew=1.5,
                label="iOS default limit (no entitlement)")
    xmax = max((v.usable_bytes / gb for v in verdicts), default=1.0)
    for y, v in zip(ys, verdicts):
        s = v.speed
        tps = f", {s.decode_low_short:.1f}-{s.decode_high_short:.1f} tok/s" if s.decode_low_short is not None else ""
        ax.text(max(v.usable_bytes, v.need_bytes) / gb + 0.08, y, f"{v.status}{tps}", va="center", fontsize=7.5,
                color=STATUS_COLORS[v.status])
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{v.phone.name} ({v.phone.ram_gb:g} GB)" for v in verdicts], fontsize=8)
    ax.set_xlim(0, xmax * 1.3)
    ax.set_xlabel("GB")
    ax.set_title(f"Memory need vs usable memory\nneed {verdicts[0].need_bytes / gb:.2f} GB"
                 if verdicts else "Memory need vs usable memory", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.7, len(verdicts) - 0.3)


def plt_patch(color: str, label: str):
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)
