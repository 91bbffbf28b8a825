"""Host inference through the real path: `Engine` on a quantized weights directory and a compiled library.

    python bench/host_engine.py WEIGHTS_DIR LIB [--contexts 256,1024,2000,4096] [--decode-tokens 128] [--threads 2]

For each context length N: a fresh sequence, an N-token prompt (random ids, fixed seed) prefilled as the
library chunks it (prefill tok/s = N / wall time), then ``--decode-tokens`` greedy steps (decode tok/s).
With ``--profile``, one decode step at the shortest context is also run through TVM's VM profiler: the
time inside the weight GEMVs (the dequantize-matmul kernels) against everything else per token.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def profile_decode(engine, token: int) -> dict:
    """Per-token time split: the weight GEMVs vs the rest, from the VM profiler (one decode step)."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(engine.lib_path)), engine.dev, profile=True)
    emb = engine._embed([token])
    engine._begin(engine.kv, engine._shape([0]), engine._shape([1]), None)
    report = vm.profile("decode", emb, engine.kv, engine.params)
    engine._end(engine.kv)
    rows = json.loads(report.json())["calls"]
    gemv = other = 0.0
    names: dict[str, float] = {}
    for row in rows:
        name, us = row["Name"]["string"], row["Duration (us)"]["microseconds"]
        if "matmul" in name or "gemv" in name or "dequantize" in name:
            gemv += us
        else:
            other += us
            names[name] = names.get(name, 0.0) + us
    top = sorted(names.items(), key=lambda kv: -kv[1])[:6]
    return {"gemv_ms": round(gemv / 1e3, 3), "other_ms": round(other / 1e3, 3),
            "other_top": {k: round(v / 1e3, 3) for k, v in top}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("lib")
    ap.add_argument("--contexts", default="128")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from mcpm_mobile.runtime.engine import Engine

    engine = Engine(args.weights, args.lib)
    rng = np.random.default_rng(0)
    engine.reset()
    engine.prefill([1] + rng.integers(3, 500, 7).tolist())  # warm up: first-call allocations
    points = []
    for n in [int(c) for c in args.contexts.split(",")]:
        prompt = [1] + rng.integers(3, 500, n - 1).tolist()
        engine.reset()
        t = time.perf_counter()
        logits = engine.prefill(prompt)
        prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            logits = engine.decode(int(np.argmax(logits)))
        decode_s = time.perf_counter() - t
        points.append({"context": n, "prefill_tok_s": round(n / prefill_s, 2),
                       "decode_tok_s": round(args.decode_tokens / decode_s, 2)})
    result = {"engine": "mcpm-mobile (TVM host library)", "threads": args.threads,
              "prefill_chunk": engine.prefill_chunk, "decode_tokens": args.decode_tokens, "points": points}
    if args.profile:
        engine.reset()
        logits = engine.prefill([1] + rng.integers(3, 500, 63).tolist())
        profile_decode(engine, int(np.argmax(logits)))  # warm-up
        result["profile"] = profile_decode(engine, int(np.argmax(logits)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
