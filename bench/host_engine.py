"""Host inference through the real path: `Engine` on a quantized weights directory and a compiled library.

    python bench/host_engine.py WEIGHTS_DIR LIB [--contexts 256,1024,2000,4096] [--decode-tokens 128] [--threads 2]

For each context length N: a fresh sequence, an N-token prompt (random ids, fixed seed) prefilled as the
library chunks it (prefill tok/s = N / wall time), then ``--decode-tokens`` greedy steps (decode tok/s).
With ``--profile``, after a 64-token prompt: the per-token time outside the weight GEMVs (``profile_decode``).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def profile_decode(engine, token: int, steps: int = 5) -> dict:
    """Per-token time outside the weight GEMVs, from decode steps run with the VM's instrument hook timing
    each Call: a step's wall time minus the time inside its GEMV kernels (dequantize-matmuls and lm_head),
    the smallest over ``steps`` steps. An upper bound: the hook's own cost (a few us per call) counts as
    outside. ``other_calls_ms``: the largest other calls as the hook saw them, in that step."""
    import time as _t

    spent: dict[str, float] = {}
    start: list[float] = []

    def instrument(func, name, before, ret, *args):
        if before:
            start.append(_t.perf_counter())
        else:
            spent[name] = spent.get(name, 0.0) + _t.perf_counter() - start.pop()
        return 0

    best = None
    engine.vm.set_instrument(instrument)
    try:
        for _ in range(steps):
            spent.clear()
            t = _t.perf_counter()
            token = int(np.argmax(engine.decode(token)))
            wall = _t.perf_counter() - t
            gemv = sum(v for k, v in spent.items() if any(w in k for w in ("matmul", "gemv", "dequantize", "lm_head")))
            if best is None or wall - gemv < best[0]:
                other = {k: v for k, v in spent.items() if not any(
                    w in k for w in ("matmul", "gemv", "dequantize", "lm_head", "decode", "embed"))}
                best = (wall - gemv, wall, gemv, sorted(other.items(), key=lambda kv: -kv[1])[:8])
    finally:
        engine.vm.set_instrument(None)
    other_s, wall, gemv, top = best
    return {"token_ms": round(wall * 1e3, 3), "gemv_ms": round(gemv * 1e3, 3), "other_ms": round(other_s * 1e3, 3),
            "other_calls_ms": {k: round(v * 1e3, 3) for k, v in top}}


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
