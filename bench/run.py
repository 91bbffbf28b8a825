"""`make bench`: one run comparing mcpm-mobile with llama.cpp on the same machine, same threads.

    python bench/run.py [--small] [--threads 2] [--skip-peer] [--out bench/out]

1. memory roofline (read bandwidth, GB/s); 2. conversion to INT4, ours vs llama.cpp's two-step path;
3. host prefill/decode tokens/s, ours vs llama.cpp on the Q4_0 GGUF of the same weights; 4. compile time and
peak RSS per target; 5. GPU (only where a device machine is lent: see bench/GPU.md).
Prints a table, rewrites the "make bench" section of BENCHMARKS.md and writes bench/results.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from checkpoint import checkpoint_bytes, make  # noqa: E402
from measure import run, run_json  # noqa: E402

CLI = Path(sys.executable).parent / "mcpm-mobile"
TARGETS = {"host": ".so", "android": ".tar", "harmonyos": ".tar", "ios": ".tar"}
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"


def weight_bytes(weights: Path) -> int:
    return sum(s["nbytes"] for s in json.loads((weights / "tensor-cache.json").read_text())["records"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a 0.5B shape for a quick look")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-peer", action="store_true", help="skip llama.cpp's conversion path (needs torch)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    shape = "small" if args.small else "2b"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    need = checkpoint_bytes(shape) * 2.2  # checkpoint + MLC weights + GGUFs + llama.cpp's f16 intermediate
    free = shutil.disk_usage(out).free
    ckpt = out / f"ckpt-{shape}"
    if free < need - (checkpoint_bytes(shape) if ckpt.is_dir() else 0):
        sys.exit(f"bench: {out}: needs about {need / 1e9:.1f} GB free disk for the {shape} shape, "
                 f"{free / 1e9:.1f} GB available (use --small for a 0.5B shape)")
    env = {"TVM_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    r: dict = {"date": datetime.date.today().isoformat(), "shape": shape, "threads": args.threads,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"}
    step = lambda s: print(f"bench: {s}", file=sys.stderr, flush=True)  # noqa: E731

    step(f"checkpoint ({shape}, bf16)")
    make(ckpt, shape)
    r["checkpoint_gb"] = round(sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e9, 2)
    step("memory roofline")
    r["bandwidth"] = run_json([sys.executable, HERE / "bandwidth.py", "--threads", args.threads], env)
    r["read_gbs"] = r["bandwidth"]["tvm_read_gb_s"]

    step("conversion: ours")
    weights, gguf = out / f"w-{shape}-q4f16_1", out / f"{shape}-q4_0.gguf"
    r["quantize"] = run_json([CLI, "quantize", ckpt, "-o", weights, "--force", "--json"], env)
    r["export_gguf"] = run_json([CLI, "export-gguf", ckpt, "-o", gguf, "--type", "q4_0", "--force", "--json"], env)
    r["export_onnx"] = run_json([CLI, "export-onnx", ckpt, "-o", out / f"onnx-{shape}", "--force", "--json"], env)
    if not args.skip_peer:
        step("conversion: llama.cpp (convert_hf_to_gguf.py -> f16, then Q4_0)")
        r["peer_convert"] = run_json([sys.executable, HERE / "peer_llamacpp.py", ckpt, "--threads", args.threads,
                                      "--work", out / "peer"], env)

    step("compile per target")
    r["compile"] = {}
    for target, suffix in TARGETS.items():
        lib = out / f"lib-{shape}-{target}{suffix}"
        r["compile"][target] = run_json([CLI, "compile", weights, "--target", target, "-o", lib, "--json"], env)

    step("host inference: ours")
    lib = out / f"lib-{shape}-host.so"
    r["ours"] = run_json([sys.executable, HERE / "host_engine.py", weights, lib, "--threads", args.threads], env)
    r["ours"]["bytes_per_token"] = weight_bytes(weights)
    step("host inference: llama.cpp")
    r["llamacpp"] = run_json([sys.executable, HERE / "llamacpp_host.py", gguf, "--threads", args.threads], env)
    r["llamacpp"]["bytes_per_token"] = gguf.stat().st_size
    for k in ("ours", "llamacpp"):
        r[k]["roofline_fraction"] = round(r[k]["decode_tok_s"] * r[k]["bytes_per_token"] / (r["read_gbs"] * 1e9), 3)
    r["gpu"] = "no device machine lent to this run (see bench/GPU.md for the recipe)"

    (out / "results.json").write_text(json.dumps(r, indent=2))
    report = render(r)
    print(report)
    write_benchmarks(report)
    plot(r, HERE / "results.png")


def render(r: dict) -> str:
    o, p = r["ours"], r["llamacpp"]
    q, g, x = r["quantize"], r["export_gguf"], r["export_onnx"]
    ceiling = r["read_gbs"] * 1e9 / o["bytes_per_token"]
    lines = [
        f"Run {r['date']} on {r['machine']}, {r['threads']} threads for every engine; MiniCPM-{r['shape']}-shaped "
        f"random bf16 checkpoint ({r['checkpoint_gb']} GB). Command: `make bench`.", "",
        f"Memory roofline (read bandwidth, {r['threads']} threads): **{r['read_gbs']} GB/s** "
        f"→ decode ceiling for our q4f16_1 weights {ceiling:.1f} tokens/s.", "",
        "| host inference | prefill tok/s (128) | decode tok/s (128) | bytes/token | roofline |",
        "|---|---|---|---|---|",
        f"| mcpm-mobile q4f16_1 | {o['prefill_tok_s']} | {o['decode_tok_s']} | {o['bytes_per_token'] / 1e9:.2f} GB "
        f"| {o['roofline_fraction']:.0%} |",
        f"| llama.cpp Q4_0 | {p['prefill_tok_s']} | {p['decode_tok_s']} | {p['bytes_per_token'] / 1e9:.2f} GB "
        f"| {p['roofline_fraction']:.0%} |",
        f"| ratio ours / llama.cpp | {o['prefill_tok_s'] / p['prefill_tok_s']:.2f}× | "
        f"{o['decode_tok_s'] / p['decode_tok_s']:.2f}× | | |", "",
        "| conversion to INT4 | wall | input GB/s | peak RSS |", "|---|---|---|---|",
        f"| mcpm-mobile quantize (q4f16_1) | {q['seconds']} s | {q['input_gb_per_s']} | {q['peak_rss_mb']:.0f} MB |",
        f"| mcpm-mobile export-gguf (q4_0) | {g['seconds']} s | {r['checkpoint_gb'] / g['seconds']:.2f} | "
        f"{g['peak_rss_mb']:.0f} MB |",
        f"| mcpm-mobile export-onnx (int4 MatMulNBits) | {x['seconds']} s | {r['checkpoint_gb'] / x['seconds']:.2f} | "
        f"{x['peak_rss_mb']:.0f} MB |",
    ]
    if "peer_convert" in r:
        pc = r["peer_convert"]
        lines.append(f"| llama.cpp convert_hf_to_gguf (f16) + quantize (Q4_0) | {pc['seconds']} s "
                     f"({pc['convert_f16']['seconds']} + {pc['quantize_q4_0']['seconds']}) | "
                     f"{r['checkpoint_gb'] / pc['seconds']:.2f} | {pc['peak_rss_mb']:.0f} MB |")
    lines += ["", "| compile | wall | peak RSS |", "|---|---|---|"]
    lines += [f"| {t} | {c['seconds']} s | {c['peak_rss_mb']:.0f} MB |" for t, c in r["compile"].items()]
    lines += ["", f"GPU: {r['gpu']}.", "", "![make bench](bench/results.png)"]
    return "\n".join(lines)


def write_benchmarks(report: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n## `make bench`: mcpm-mobile beside llama.cpp\n\n{report}\n{END}"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = ["mcpm-mobile", "llama.cpp"]
    ceiling = r["read_gbs"] * 1e9 / r["ours"]["bytes_per_token"]
    ax = axes[0]
    ax.bar(names, [r["ours"]["decode_tok_s"], r["llamacpp"]["decode_tok_s"]], color=["#2a7", "#888"])
    ax.axhline(ceiling, ls="--", color="k", lw=1, label=f"roofline {ceiling:.0f}")
    ax.set_title("decode tokens/s"), ax.legend()
    axes[1].bar(names, [r["ours"]["prefill_tok_s"], r["llamacpp"]["prefill_tok_s"]], color=["#2a7", "#888"])
    axes[1].set_title("prefill tokens/s (128-token prompt)")
    conv = {"quantize": r["quantize"]["seconds"], "export-gguf": r["export_gguf"]["seconds"]}
    if "peer_convert" in r:
        conv["llama.cpp\nconvert+quantize"] = r["peer_convert"]["seconds"]
    axes[2].bar(list(conv), list(conv.values()), color=["#2a7", "#2a7", "#888"][:len(conv)])
    axes[2].set_title("conversion to INT4 (s, lower is better)")
    fig.suptitle(f"MiniCPM-{r['shape']} shape, {r['threads']} threads, {r['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
