"""`make bench`: one run comparing mcpm-mobile with llama.cpp on the same machine, same threads.

    python bench/run.py [--quick] [--rounds 3] [--threads 2] [--eight-b-layers N] [--skip-peer] [--skip-8b]

Honest by construction: every measured command runs in its own process under ``bench/launch.py`` (wall time
and that process's own peak RSS); set-up (checkpoints, llama.cpp's converter venv) runs before and outside
any timing; every ours/llama.cpp ratio comes from ``--rounds`` alternating rounds in this run (median ratio,
with each engine's min..max shown).

1. memory roofline; 2. conversion of the MiniCPM4-0.5B shape to INT4, ours vs llama.cpp's two-step path;
3. compile per target; 4. tokens/s against context length (prefill and decode), ours vs llama.cpp on the
Q4_0 GGUF of the same weights, and the per-token time outside the weight GEMVs (VM profiler); 5. `run`'s
peak RSS; 6. the MiniCPM4-8B shape (``--eight-b-layers`` cuts its depth, every dimension kept): conversion
memory, compile, decode against llama.cpp and the roofline. Prints the report, rewrites the "make bench"
section of BENCHMARKS.md and writes bench/results.png. ``--quick`` (about 20 minutes on 2 quiet cores): the
8B shape at 4 layers. GPU: only where a device machine is lent (bench/GPU.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from checkpoint import checkpoint_bytes, shape_dims  # noqa: E402
from measure import run_json, replace_section  # noqa: E402
from report import render, plot, targets  # noqa: E402

CLI = Path(sys.executable).parent / "mcpm-mobile"
TARGETS = {"host": ".so", "android": ".tar", "harmonyos": ".tar", "ios": ".tar"}
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"
CONTEXTS = [256, 1024, 2000, 4096]
DECODE = 128
WINDOW = 4096 + DECODE + 128


def step(s: str) -> None:
    print(f"bench: {s}", file=sys.stderr, flush=True)


def weight_bytes(weights: Path, skip_embedding: bool = False) -> int:
    """Bytes of the weights a decode step reads (an untied embedding table is only indexed, not streamed)."""
    shards = json.loads((weights / "tensor-cache.json").read_text())["records"]
    return sum(r["nbytes"] for s in shards for r in s["records"]
               if not (skip_embedding and r["name"].startswith("model.embed_tokens")))


def rounds_of(n: int, fns: dict) -> dict:
    """Call each fn once per round, alternating; {name: [result per round]}."""
    out: dict = {k: [] for k in fns}
    for i in range(n):
        for name, fn in fns.items():
            step(f"  round {i + 1}/{n}: {name}")
            out[name].append(fn())
    return out


def checkpoint(out: Path, shape: str, layers: int | None) -> Path:
    """Generated in its own process (set-up: never timed, never in the bench's memory)."""
    ckpt = out / (f"ckpt-{shape}" + (f"-{layers}l" if layers else ""))
    if not (ckpt / "model.safetensors").is_file():
        need = checkpoint_bytes(shape, layers) * 2.3
        free = shutil.disk_usage(out).free
        if free < need:
            sys.exit(f"bench: {out}: needs about {need / 1e9:.1f} GB free disk for the {shape} shape, "
                     f"{free / 1e9:.1f} GB available")
        cmd = [sys.executable, HERE / "checkpoint.py", ckpt, "--shape", shape] + (["--layers", layers] if layers else [])
        subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)
    return ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 8B shape at 4 layers (about 20 minutes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eight-b-layers", type=int, help="depth of the 8B shape (default 32, --quick 4)")
    ap.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    ap.add_argument("--skip-peer", action="store_true", help="skip llama.cpp's conversion path (needs torch)")
    ap.add_argument("--skip-8b", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and the plot")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    layers8 = args.eight_b_layers or (4 if args.quick else None)
    env = {"TVM_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
           "MCPM_CACHE_DIR": str(out / "kernel-cache")}
    contexts = args.contexts
    r: dict = {"date": datetime.date.today().isoformat(), "threads": args.threads, "rounds": args.rounds,
               "command": "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else ""),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
               "contexts": [int(c) for c in contexts.split(",")], "decode_tokens": DECODE, "window": WINDOW,
               "load_before": round(os.getloadavg()[0], 1)}

    step("set-up (untimed): checkpoints, llama.cpp's converter")
    ckpt = checkpoint(out, "0.5b", None)
    ckpt8 = None if args.skip_8b else checkpoint(out, "8b", layers8)
    if not args.skip_peer:
        subprocess.run([sys.executable, HERE / "peer_llamacpp.py", ckpt, "--work", out / "peer", "--prepare"], check=True)
    from bin_input import bin_twin

    twin = bin_twin(ckpt, out / "ckpt-0.5b-bin")  # the same tensors as PyTorch .bin (torch.save's zip layout)
    r["checkpoint_gb"] = round((ckpt / "model.safetensors").stat().st_size / 1e9, 3)

    step("memory roofline")
    r["bandwidth"] = run_json([sys.executable, HERE / "bandwidth.py", "--threads", args.threads], env)
    r["read_gbs"] = r["bandwidth"]["tvm_read_gb_s"]

    step("conversion (MiniCPM4-0.5B shape), alternating rounds")
    weights, gguf = out / "w-0.5b-q4f16_1", out / "0.5b-q4_0.gguf"
    conv = {"quantize": lambda e=env: run_json([CLI, "quantize", ckpt, "-o", weights, "--force", "--json"], e),
            "quantize_bin": lambda e=env: run_json([CLI, "quantize", twin, "-o", out / "w-0.5b-bin", "--force",
                                                    "--json"], e),
            "export_gguf": lambda e=env: run_json([CLI, "export-gguf", ckpt, "-o", gguf, "--type", "q4_0", "--force",
                                                   "--json"], e),
            "export_onnx": lambda e=env: run_json([CLI, "export-onnx", ckpt, "-o", out / "onnx-0.5b", "--force",
                                                   "--json"], e)}
    if not args.skip_peer:
        conv["llamacpp"] = lambda: run_json([sys.executable, HERE / "peer_llamacpp.py", ckpt, "--threads",
                                             args.threads, "--work", out / "peer"], env)
    # Conversion kernels are compiled on a machine's first run and cached (toolkit/support/cache.py): each of
    # ours is measured once from an empty cache (cold), then the cache is filled untimed and the rounds run warm.
    cold = {**env, "MCPM_CACHE_DIR": str(out / "kernel-cache-cold")}
    r["conversion_cold"] = {}
    for name, fn in conv.items():
        if name != "llamacpp":
            shutil.rmtree(out / "kernel-cache-cold", ignore_errors=True)
            r["conversion_cold"][name] = fn(cold)
    for name, fn in conv.items():
        if name != "llamacpp":
            fn(env)
    r["conversion"] = rounds_of(args.rounds, conv)

    step("compile per target (MiniCPM4-0.5B shape)")
    r["compile"] = {}
    for target, suffix in TARGETS.items():
        lib = out / f"lib-0.5b-{target}{suffix}"
        r["compile"][target] = run_json([CLI, "compile", weights, "--target", target, "-o", lib, "--context-window",
                                         WINDOW, "--force", "--json"], env)

    step("host inference against context length, alternating rounds")
    lib = out / "lib-0.5b-host.so"
    host = {"ours": lambda: run_json([sys.executable, HERE / "host_engine.py", weights, lib, "--threads",
                                      args.threads, "--contexts", contexts, "--decode-tokens", DECODE, "--profile"],
                                     env),
            "llamacpp": lambda: run_json([sys.executable, HERE / "llamacpp_host.py", gguf, "--threads", args.threads,
                                          "--contexts", contexts, "--decode-tokens", DECODE], env)}
    r["host"] = rounds_of(args.rounds, host)
    r["bytes_per_token"] = {"ours": weight_bytes(weights), "llamacpp": gguf.stat().st_size}

    step("run memory")
    r["run"] = run_json([CLI, "run", weights, "--lib", lib, "--prompt", "Tell me about phones.", "--max-tokens", 64,
                         "--json"], env)
    d = shape_dims("0.5b")
    r["run"]["weights_bytes"] = weight_bytes(weights)
    r["run"]["kv_bytes"] = d["layers"] * 2 * d["kv_heads"] * (d["hidden"] // d["heads"]) * WINDOW * 2

    if ckpt8 is not None:
        step(f"MiniCPM4-8B shape ({layers8 or 32} layers)")
        w8, g8, lib8 = out / "w-8b-q4f16_1", out / "8b-q4_0.gguf", out / "lib-8b-host.so"
        e8 = {"layers": layers8 or 32, "checkpoint_gb": round((ckpt8 / "model.safetensors").stat().st_size / 1e9, 2)}
        e8["quantize"] = run_json([CLI, "quantize", ckpt8, "-o", w8, "--force", "--json"], env)
        e8["export_gguf"] = run_json([CLI, "export-gguf", ckpt8, "-o", g8, "--type", "q4_0", "--force", "--json"], env)
        e8["export_onnx"] = run_json([CLI, "export-onnx", ckpt8, "-o", out / "onnx-8b", "--force", "--json"], env)
        e8["compile"] = {target: run_json([CLI, "compile", w8, "--target", target, "-o", out / f"lib-8b-{target}{suffix}",
                                           "--force", "--json"], env) for target, suffix in TARGETS.items()}
        e8["host"] = rounds_of(args.rounds, {
            "ours": lambda: run_json([sys.executable, HERE / "host_engine.py", w8, lib8, "--threads", args.threads,
                                      "--contexts", "128", "--decode-tokens", 64], env),
            "llamacpp": lambda: run_json([sys.executable, HERE / "llamacpp_host.py", g8, "--threads", args.threads,
                                          "--contexts", "128", "--decode-tokens", 64], env)})
        e8["bytes_per_token"] = {"ours": weight_bytes(w8, skip_embedding=True),
                                 "llamacpp": g8.stat().st_size}
        r["8b"] = e8
    r["gpu"] = ("no device machine lent to this task (the device tool's status: can_start_another false, "
                "not drawn); bench/GPU.md has the recipe")

    r["load_after"] = round(os.getloadavg()[0], 1)
    (out / "results.json").write_text(json.dumps(r, indent=2))
    r["targets"] = targets(r)
    report = render(r)
    print(report)
    if not args.no_write:
        write_benchmarks(report)
        plot(r, HERE / "results.png")


def write_benchmarks(report: str) -> None:
    replace_section(ROOT / "BENCHMARKS.md", BEGIN, END, "`make bench`: mcpm-mobile beside llama.cpp", report)


if __name__ == "__main__":
    main()
