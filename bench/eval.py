"""`make eval`: what INT4 costs, on the same weights and text, ours beside llama.cpp's own quantizer.

    python bench/eval.py [--shape 2b|small|tiny] [--context 256] [--windows 2] [--threads 2] [--out bench/out]

Makes (or reuses) the benchmark checkpoint (bench/checkpoint.py: random bf16 weights), a text in its
tokenizer's domain, and every artifact: our MLC q4f16_1 / q4f32_1 weights with host libraries, our GGUF q4_0 /
q4_k_m / q8_0, llama.cpp's own Q4_0 and Q4_K_M (``llama_model_quantize`` on our f16 GGUF), our ONNX INT4; then
one ``mcpm-mobile eval`` over all of them. Prints the table and rewrites the "make eval" section of
BENCHMARKS.md. Random weights are a poor proxy for a trained model's quality: the table says so.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from checkpoint import SHAPES, make  # noqa: E402
from measure import run, run_json, replace_section  # noqa: E402

CLI = Path(sys.executable).parent / "mcpm-mobile"
BEGIN, END = "<!-- make eval: begin -->", "<!-- make eval: end -->"
LLAMA_FTYPES = {"q4_0": 2, "q4_k_m": 15}  # llama.h: LLAMA_FTYPE_MOSTLY_Q4_0, LLAMA_FTYPE_MOSTLY_Q4_K_M


def write_text(path: Path, tokens_needed: int) -> Path:
    from mcpm_mobile.model.tiny import _corpus

    lines = max(200, tokens_needed // 6)  # a corpus line is 10-30 tokens with the benchmark tokenizer
    path.write_text("\n".join(_corpus(2026, lines)), encoding="utf-8")
    return path


def llama_quantize(f16: Path, out: Path, type_: str, threads: int) -> dict:
    """llama.cpp's own quantizer (llama-quantize's library call), timed in this process."""
    import logging

    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its per-tensor log, as verbose=False does
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = LLAMA_FTYPES[type_], threads
    start = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        sys.exit(f"bench: llama_model_quantize {type_} failed")
    return {"seconds": round(time.perf_counter() - start, 2), "bytes": out.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="2b")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--from-json", type=Path, help="only render (and write) the table of an earlier run's results")
    args = ap.parse_args()
    if args.from_json:
        report = render(json.loads(args.from_json.read_text()))
        print(report)
        if not args.no_write:
            write_benchmarks(report)
        return
    out, shape = args.out, args.shape
    out.mkdir(parents=True, exist_ok=True)
    env = {"TVM_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads)}
    step = lambda s: print(f"eval bench: {s}", file=sys.stderr, flush=True)  # noqa: E731
    r: dict = {"date": datetime.date.today().isoformat(), "shape": shape, "threads": args.threads,
               "context": args.context, "machine": f"{platform.machine()}, {os.cpu_count()} cores"}

    step(f"checkpoint ({shape}, random bf16)")
    ckpt = make(out / f"ckpt-{shape}", shape)
    text = write_text(out / f"eval-text-{shape}.txt", args.windows * args.context)

    step("artifacts: ours")
    conv: dict = {}
    mlc = []
    for q in ("q4f16_1", "q4f32_1"):
        w, lib = out / f"w-{shape}-{q}", out / f"lib-{shape}-{q}-host.so"
        conv[f"quantize {q}"] = run_json([CLI, "quantize", ckpt, "-o", w, "--quantization", q, "--force", "--json"],
                                         env)
        run_json([CLI, "compile", w, "--target", "host", "-o", lib, "--json"], env)
        mlc += ["--mlc", w, lib]
    ggufs = {}
    for t in ("q4_0", "q4_k_m", "q8_0", "f16"):
        ggufs[t] = out / f"{shape}-{t}.gguf"
        conv[f"export-gguf {t}"] = run_json([CLI, "export-gguf", ckpt, "-o", ggufs[t], "--type", t, "--force",
                                             "--json"], env)
    onnx = out / f"onnx-{shape}"
    conv["export-onnx"] = run_json([CLI, "export-onnx", ckpt, "-o", onnx, "--force", "--json"], env)
    step("artifacts: llama.cpp's quantizer on our f16 GGUF")
    peers = {}
    for t in LLAMA_FTYPES:
        peers[t] = out / f"{shape}-llama-{t}.gguf"
        conv[f"llama.cpp quantize {t} (from f16)"] = llama_quantize(ggufs["f16"], peers[t], t, args.threads)
    r["conversion"] = {k: {key: v[key] for key in ("seconds", "peak_rss_mb") if key in v} for k, v in conv.items()}

    step(f"mcpm-mobile eval: {args.windows} windows of {args.context} tokens")
    cmd = [CLI, "eval", ckpt, "--text", text, "--context", args.context, "--windows", args.windows,
           "--threads", args.threads, "--json", *mlc]
    for t in ("q4_0", "q4_k_m", "q8_0"):
        cmd += ["--gguf", ggufs[t]]
    for t in LLAMA_FTYPES:
        cmd += ["--gguf", peers[t]]
    cmd += ["--onnx", onnx]
    r["eval"] = run_json(cmd, env)
    (out / f"eval-results-{shape}.json").write_text(json.dumps(r, indent=2))
    report = render(r)
    print(report)
    if not args.no_write:
        write_benchmarks(report)


NAMES = {"q4f16_1": "mcpm-mobile MLC q4f16_1 (TVM host)", "q4f32_1": "mcpm-mobile MLC q4f32_1 (TVM host)",
         "-q4_0.gguf": "mcpm-mobile GGUF q4_0", "-q4_k_m.gguf": "mcpm-mobile GGUF q4_k_m",
         "-q8_0.gguf": "mcpm-mobile GGUF q8_0", "-llama-q4_0.gguf": "llama.cpp's own Q4_0",
         "-llama-q4_k_m.gguf": "llama.cpp's own Q4_K_M", "onnx-": "mcpm-mobile ONNX INT4 (onnxruntime)"}


def row_name(a: dict) -> str:
    path = a["path"]
    for key in sorted(NAMES, key=len, reverse=True):
        if key in Path(path).name:
            return NAMES[key]
    return a["label"]


def render(r: dict) -> str:
    e = r["eval"]
    rows = {row_name(a): a for a in e["artifacts"]}
    f = e["float"]
    lines = [
        f"Run {r['date']} on {r['machine']}, {r['threads']} threads per engine; MiniCPM-{r['shape']}-shaped checkpoint "
        f"with **random** bf16 weights (bench/checkpoint.py: Gaussian, std 1/sqrt(fan-in)), so perplexities are "
        "meaningless and the KL divergences are those of random matrices, not of a trained MiniCPM: the table ranks "
        "the quantizers on identical weights, it does not predict a real model's quality loss. "
        f"{e['windows']} windows of {e['context']} tokens, positions {e['scored_positions']} scored "
        f"({f['tokens_scored']} tokens). Float reference: {f['kind']}. Command: `make eval`.", "",
        "| artifact | KL mean | ± s.e. | KL p99 | KL max | top-1 agree | PPL | eval tok/s |",
        "|---|---|---|---|---|---|---|---|",
        f"| float (numpy float32) | 0 | | | | 100% | {f['perplexity']:.4g} | {f['tokens_per_s']} |",
    ]
    for name, a in rows.items():
        lines.append(f"| {name} | {a['kl_mean']:.3e} | {a['kl_mean_stderr']:.1e} | {a['kl_p99']:.3e} | "
                     f"{a['kl_max']:.3e} | {a['top1_agreement']:.2%} | {a['perplexity']:.4g} | {a['tokens_per_s']} |")
    ours_q4 = rows.get("mcpm-mobile MLC q4f16_1 (TVM host)")
    llama_q40, llama_km = rows.get("llama.cpp's own Q4_0"), rows.get("llama.cpp's own Q4_K_M")
    ours_km = rows.get("mcpm-mobile GGUF q4_k_m")
    lines += ["", "Targets (issue 19):", ""]
    if ours_q4 and llama_q40:
        ok = ours_q4["kl_mean"] <= llama_q40["kl_mean"]
        lines.append(f"- our q4f16_1 no worse than llama.cpp's Q4_0 on KL: {ours_q4['kl_mean']:.3e} vs "
                     f"{llama_q40['kl_mean']:.3e} → **{'met' if ok else 'not met'}**")
    if ours_km and llama_km:
        d = ours_km["kl_mean"] / llama_km["kl_mean"] - 1
        lines.append(f"- our q4_k_m within 5 % of llama.cpp's Q4_K_M: {ours_km['kl_mean']:.3e} vs "
                     f"{llama_km['kl_mean']:.3e} ({d:+.3%}) → **{'met' if abs(d) <= 0.05 else 'not met'}**")
    lines += ["", "| conversion | wall |", "|---|---|"]
    lines += [f"| {k} | {v['seconds']} s |" for k, v in r["conversion"].items()]
    lines += ["", f"`mcpm-mobile eval` itself: {e['seconds']} s, peak RSS {e['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines)


def write_benchmarks(report: str) -> None:
    replace_section(ROOT / "BENCHMARKS.md", BEGIN, END, "`make eval`: what INT4 costs (KL divergence from the float model)", report)


if __name__ == "__main__":
    main()
