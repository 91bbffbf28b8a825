"""The `make bench` report: medians and spreads of the alternating rounds, the issue-18 targets, the plot."""
from __future__ import annotations

import statistics


def med(values: list[float]) -> float:
    return statistics.median(values)


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    """``median (min-max)``."""
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def point(runs: list[dict], context: int, key: str) -> list[float]:
    return [next(p[key] for p in run["points"] if p["context"] == context) for run in runs]


def ratio(r_host: dict, context: int, key: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of ours / llama.cpp, each round's pair taken back to back."""
    rs = [a / b for a, b in zip(point(r_host["ours"], context, key), point(r_host["llamacpp"], context, key))]
    return med(rs), min(rs), max(rs)


def conv_gbs(r: dict, name: str, gb: float) -> list[float]:
    return [gb / x["seconds"] for x in r["conversion"][name]]


def first_run(r: dict, name: str, gb: float) -> str:
    """The cold-cache figure of a conversion (its kernels compiled in that run), when measured."""
    c = r.get("conversion_cold", {}).get(name)
    return f"; first run on a machine (kernels compiled) {gb / c['seconds']:.2f} GB/s" if c else ""


def targets(r: dict) -> list[tuple[str, bool | None, str]]:
    """(target, met, measured figure and what limits it) for each target of issue 18."""
    t = []
    ctx = r["contexts"]
    h = r["host"]

    def rt(c, key):
        m, lo, hi = ratio(h, c, key)
        return m, f"{m:.2f}x (rounds {lo:.2f}-{hi:.2f}): {med(point(h['ours'], c, key)):.1f} vs " \
                  f"{med(point(h['llamacpp'], c, key)):.1f} tok/s"

    if 2000 in ctx:
        m, s = rt(2000, "decode_tok_s")
        t.append(("decode 128 tokens after a 2,000-token prompt >= 1.2x llama.cpp", m >= 1.2, s))
    if 1024 in ctx:
        m, s = rt(1024, "prefill_tok_s")
        t.append(("prefill of a 1,024-token prompt >= 1.5x llama.cpp", m >= 1.5, s))
    m, s = rt(ctx[0], "decode_tok_s")
    t.append((f"MiniCPM4-0.5B decode (after {ctx[0]} tokens) >= 1.3x llama.cpp", m >= 1.3, s))
    prof = [x["profile"] for x in h["ours"] if "profile" in x]
    if prof:
        other = [p["other_ms"] for p in prof]
        top = ", ".join(f"{k} {v:.2f} ms" for k, v in list(prof[0]["other_calls_ms"].items())[:4])
        t.append(("per-token time outside the weight GEMVs < 1 ms", med(other) < 1.0,
                  f"{span(other, '{:.2f}')} ms of a {med([p['token_ms'] for p in prof]):.2f} ms token (GEMVs "
                  f"{med([p['gemv_ms'] for p in prof]):.2f} ms); largest other parts (unhooked token wall time minus the GEMVs timed by a C++ VM instrument): {top}"))
    gb = r["checkpoint_gb"]
    q = conv_gbs(r, "quantize", gb)
    rss = max(x["peak_rss_mb"] for x in r["conversion"]["quantize"])
    line = f"{span(q, '{:.2f}')} GB/s, peak RSS {rss:.0f} MB{first_run(r, 'quantize', gb)}"
    ok = med(q) >= 0.5 and rss <= 1024
    if "llamacpp" in r["conversion"]:
        rs = [b["seconds"] / a["seconds"] for a, b in zip(r["conversion"]["quantize"], r["conversion"]["llamacpp"])]
        line += f"; {med(rs):.2f}x llama.cpp (rounds {min(rs):.2f}-{max(rs):.2f})"
        ok = ok and med(rs) >= 3
    t.append(("quantize >= 0.5 GB/s, >= 3x llama.cpp, peak RSS <= 1 GB (safetensors)", ok, line))
    if "quantize_bin" in r["conversion"]:
        qb = conv_gbs(r, "quantize_bin", gb)
        rss = max(x["peak_rss_mb"] for x in r["conversion"]["quantize_bin"])
        t.append(("quantize from PyTorch .bin >= 0.5 GB/s, peak RSS <= 1 GB", med(qb) >= 0.5 and rss <= 1024,
                  f"{span(qb, '{:.2f}')} GB/s, peak RSS {rss:.0f} MB (the same compiled quantizer on the .bin's "
                  f"memory-mapped storages){first_run(r, 'quantize_bin', gb)}"))
    for name in ("export_gguf", "export_onnx"):
        g = conv_gbs(r, name, gb)
        rss = max(x["peak_rss_mb"] for x in r["conversion"][name])
        t.append((f"{name.replace('_', '-')} >= 0.5 GB/s, peak RSS <= 1 GB", med(g) >= 0.5 and rss <= 1024,
                  f"{span(g, '{:.2f}')} GB/s, peak RSS {rss:.0f} MB{first_run(r, name, gb)}"))
    run = r["run"]
    bound = (run["weights_bytes"] + run["kv_bytes"]) / 2**20 + 300
    t.append(("`run` peak RSS <= weights + KV cache + 300 MB", run["peak_rss_mb"] <= bound,
              f"{run['peak_rss_mb']:.0f} MB vs bound {bound:.0f} MB (weights {run['weights_bytes'] / 2**20:.0f} + "
              f"KV {run['kv_bytes'] / 2**20:.0f} + 300)"))
    if "8b" in r:
        e = r["8b"]
        dec = [a / b for a, b in zip(point(e["host"]["ours"], 128, "decode_tok_s"),
                                     point(e["host"]["llamacpp"], 128, "decode_tok_s"))]
        ours = med(point(e["host"]["ours"], 128, "decode_tok_s"))
        roof = ours * e["bytes_per_token"]["ours"] / (r["read_gbs"] * 1e9)
        t.append((f"8B shape ({e['layers']} layers) decode >= 1.1x llama.cpp and >= 70 % of roofline",
                  med(dec) >= 1.1 and roof >= 0.7,
                  f"{med(dec):.2f}x (rounds {min(dec):.2f}-{max(dec):.2f}), {ours:.1f} tok/s = {roof:.0%} of "
                  f"{r['read_gbs']} GB/s"))
        c = e["compile"]
        worst = max(c.values(), key=lambda x: x["seconds"]), max(c.values(), key=lambda x: x["peak_rss_mb"])
        t.append((f"8B shape compile <= 60 s and <= 1.5 GB per target ({', '.join(c)})",
                  worst[0]["seconds"] <= 60 and worst[1]["peak_rss_mb"] <= 1536,
                  f"slowest {worst[0]['seconds']:.1f} s, largest {worst[1]['peak_rss_mb']:.0f} MB"))
        convs = [k for k in ("quantize", "export_gguf", "export_onnx") if k in e]
        t.append((f"8B shape conversion peak RSS <= 1 GB", all(e[k]["peak_rss_mb"] <= 1024 for k in convs),
                  ", ".join(f"{k.replace('_', '-')} {e[k]['peak_rss_mb']:.0f} MB "
                            f"({e['checkpoint_gb'] / e[k]['seconds']:.2f} GB/s)" for k in convs)))
    t.append(("GPU decode >= 50 % of copy bandwidth", None, r["gpu"]))
    return t


def render(r: dict) -> str:
    h, ctx = r["host"], r["contexts"]
    lines = [
        f"Run {r['date']} on {r['machine']}, {r['threads']} threads for every engine, {r['rounds']} alternating "
        f"rounds (ours, llama.cpp, ours, ...); figures are medians with (min-max) over the rounds; ratios are the "
        f"median of the per-round ratios. Command: `{r['command']}`. Each measured command is its own process under "
        "`bench/launch.py` (wall time, that process's own peak RSS); checkpoint generation and llama.cpp's venv "
        "are set-up, outside every figure. Load average (1 min) when the run started / ended: "
        f"{r.get('load_before')} / {r.get('load_after')} on {r['machine'].split(',')[1].strip()} (other jobs on the "
        "host inflate every figure; ratios from alternating rounds are the comparable part).", "",
        f"Memory roofline (read bandwidth, {r['threads']} threads): **{r['read_gbs']} GB/s**.", "",
        "### Targets (issue 18)", "", "| target | met | measured (what limits it) |", "|---|---|---|"]
    lines += [f"| {name} | {'**met**' if ok else ('not measured' if ok is None else '**not met**')} | {s} |"
              for name, ok, s in r["targets"]]
    lines += ["", f"### Tokens/s against context length (MiniCPM4-0.5B shape, q4f16_1 vs Q4_0, "
                  f"{r['decode_tokens']} decode tokens after the prompt)", "",
              "| context | prefill ours | prefill llama.cpp | ratio | decode ours | decode llama.cpp | ratio |",
              "|---|---|---|---|---|---|---|"]
    for c in ctx:
        pr, dr = ratio(h, c, "prefill_tok_s"), ratio(h, c, "decode_tok_s")
        lines.append(f"| {c} | {span(point(h['ours'], c, 'prefill_tok_s'))} | "
                     f"{span(point(h['llamacpp'], c, 'prefill_tok_s'))} | {pr[0]:.2f}x | "
                     f"{span(point(h['ours'], c, 'decode_tok_s'))} | {span(point(h['llamacpp'], c, 'decode_tok_s'))} "
                     f"| {dr[0]:.2f}x |")
    prefill_chunk = h["ours"][0].get("prefill_chunk")
    lines += ["", f"Our library: compiled with `--context-window {r['window']}` (prefill chunk {prefill_chunk}); "
                  "llama.cpp: n_batch 2048, n_ubatch 512 (its defaults).", ""]
    gb = r["checkpoint_gb"]
    lines += [f"### Conversion of the MiniCPM4-0.5B shape ({gb} GB bf16 safetensors)", "",
              "| conversion | wall s | input GB/s | peak RSS | first run on a machine (kernels compiled, cold cache) |",
              "|---|---|---|---|---|"]
    names = {"quantize": "mcpm-mobile quantize (q4f16_1)", "quantize_bin": "mcpm-mobile quantize from .bin (q4f16_1)", "export_gguf": "mcpm-mobile export-gguf (q4_0)",
             "export_onnx": "mcpm-mobile export-onnx (int4 MatMulNBits)",
             "llamacpp": "llama.cpp convert_hf_to_gguf (f16) + quantize (Q4_0)"}
    for k, runs in r["conversion"].items():
        secs = [x["seconds"] for x in runs]
        c = r.get("conversion_cold", {}).get(k)
        first = f"{c['seconds']:.2f} s, {gb / c['seconds']:.2f} GB/s, {c['peak_rss_mb']:.0f} MB" if c else "-"
        lines.append(f"| {names[k]} | {span(secs, '{:.2f}')} | {span([gb / s for s in secs], '{:.2f}')} | "
                     f"{max(x['peak_rss_mb'] for x in runs):.0f} MB | {first} |")
    lines += ["", "| compile (0.5B shape) | wall | peak RSS |", "|---|---|---|"]
    lines += [f"| {t} | {c['seconds']} s | {c['peak_rss_mb']:.0f} MB |" for t, c in r["compile"].items()]
    if "8b" in r:
        e = r["8b"]
        lines += ["", f"### MiniCPM4-8B shape, {e['layers']} of its 32 layers (every dimension as published; "
                      f"{e['checkpoint_gb']} GB bf16)", "", "| | ours | llama.cpp |", "|---|---|---|",
                  f"| prefill tok/s (128) | {span(point(e['host']['ours'], 128, 'prefill_tok_s'))} | "
                  f"{span(point(e['host']['llamacpp'], 128, 'prefill_tok_s'))} |",
                  f"| decode tok/s | {span(point(e['host']['ours'], 128, 'decode_tok_s'))} | "
                  f"{span(point(e['host']['llamacpp'], 128, 'decode_tok_s'))} |",
                  f"| bytes read per token | {e['bytes_per_token']['ours'] / 1e9:.2f} GB | "
                  f"{e['bytes_per_token']['llamacpp'] / 1e9:.2f} GB (file) |",
                  *(f"| {k.replace('_', '-')} | {e[k]['seconds']} s, {e[k]['peak_rss_mb']:.0f} MB | |"
                    for k in ("quantize", "export_gguf", "export_onnx") if k in e),
                  *(f"| compile ({t}) | {c['seconds']} s, {c['peak_rss_mb']:.0f} MB | |" for t, c in e["compile"].items())]
    lines += ["", f"GPU: {r['gpu']}.", "", "![make bench](bench/results.png)"]
    return "\n".join(lines)


def plot(r: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, ctx = r["host"], r["contexts"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in ((axes[0], "prefill_tok_s", "prefill tokens/s"),
                           (axes[1], "decode_tok_s", f"decode tokens/s ({r['decode_tokens']} after the prompt)")):
        for eng, color, label in (("ours", "#2a7", "mcpm-mobile q4f16_1"), ("llamacpp", "#888", "llama.cpp Q4_0")):
            mids = [med(point(h[eng], c, key)) for c in ctx]
            lo = [mid - min(point(h[eng], c, key)) for mid, c in zip(mids, ctx)]
            hi = [max(point(h[eng], c, key)) - mid for mid, c in zip(mids, ctx)]
            ax.errorbar(ctx, mids, yerr=[lo, hi], marker="o", color=color, label=label, capsize=3)
        ax.set_xscale("log", base=2), ax.set_xticks(ctx, [str(c) for c in ctx])
        ax.set_xlabel("prompt tokens (context)"), ax.set_title(title), ax.legend()
    gb = r["checkpoint_gb"]
    conv = {k: med([gb / x["seconds"] for x in v]) for k, v in r["conversion"].items()}
    cold = r.get("conversion_cold", {})
    labels = {"quantize": "quantize", "quantize_bin": "quantize\n(.bin)", "export_gguf": "export-gguf\nq4_0",
              "export_onnx": "export-onnx", "llamacpp": "llama.cpp\nconvert+quantize"}
    x = list(range(len(conv)))
    axes[2].bar([i - 0.2 for i in x], list(conv.values()), 0.4, label="median of the rounds",
                color=["#888" if k == "llamacpp" else "#2a7" for k in conv])
    firsts = [(i, gb / cold[k]["seconds"]) for i, k in enumerate(conv) if k in cold]
    if firsts:
        axes[2].bar([i + 0.2 for i, _ in firsts], [v for _, v in firsts], 0.4, color="#9dc",
                    label="first run on a machine (kernels compiled)")
    axes[2].set_xticks(x, [labels.get(k, k) for k in conv], fontsize=8)
    axes[2].axhline(0.5, ls="--", color="k", lw=1, label="target 0.5 GB/s")
    axes[2].set_ylim(0, 1.5 * max([*conv.values(), *(v for _, v in firsts)]))  # room for the legend
    axes[2].set_title("conversion, input GB/s (higher is better)"), axes[2].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"MiniCPM4-0.5B shape, {r['threads']} threads, {r['rounds']} alternating rounds, {r['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
