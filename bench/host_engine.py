"""Host inference through the real path: `Engine` on a quantized weights directory and a compiled library.

    python bench/host_engine.py WEIGHTS_DIR LIB [--contexts 256,1024,2000,4096] [--decode-tokens 128] [--threads 2]

For each context length N: a fresh sequence, an N-token prompt (random ids, fixed seed) prefilled as the
library chunks it (prefill tok/s = N / wall time), then ``--decode-tokens`` greedy steps (decode tok/s).
With ``--profile``, after a 64-token prompt: the per-token time outside the weight GEMVs (``profile_decode``,
timed without Python per VM call by ``vmprof.cc``; needs a C++ compiler).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


GEMV = ("matmul", "gemv", "lm_head")  # the weight GEMVs: the dequantize-matmuls and the (tied) lm_head


def profile_decode(engine, token: int, steps: int = 32) -> dict:
    """Per-token decode time outside the weight GEMVs, with no Python hook in any timed step.

    ``steps`` pairs of decode steps, alternating so that both halves of a pair see the same load on a
    shared machine: an unhooked step, timed as a whole (``engine.decode``: embedding, KV-cache
    begin/end, the VM's ``decode``, the logits), then a step under ``bench/vmprof.cc``, a C++ VM
    instrument that times every Call instruction (a clock read and a hash-map update, ~0.1 us per
    call; no Python runs per call).

    ``token_ms``: median wall time of the unhooked steps. ``gemv_ms``: median time inside the weight
    GEMV kernels (dequantize-matmuls, lm_head) of the timed steps. ``other_ms``: median over the pairs
    of (unhooked wall time - GEMV time). ``other_calls_ms``: median time per step of every other
    callee, largest first, and ``(between calls)``: ``other_ms`` minus those calls (the VM
    interpreter between instructions, the engine's Python, the embedding's input tensor).
    """
    from vmprof import VMProfiler

    prof = VMProfiler()
    walls, gemvs, per_call = [], [], {}
    for _ in range(steps):
        t = time.perf_counter()
        logits = engine.decode(token)
        walls.append(time.perf_counter() - t)
        token = int(np.argmax(logits))
        prof.reset()
        with prof.attached(engine.vm):
            token = int(np.argmax(engine.decode(token)))
        calls = prof.report()
        gemvs.append(sum(s for k, (_, s) in calls.items() if any(w in k for w in GEMV)))
        for k, (_, s) in calls.items():
            per_call.setdefault(k, []).append(s)
    med = lambda xs: float(np.median(xs)) * 1e3  # noqa: E731
    outside = med([w - g for w, g in zip(walls, gemvs)])  # per pair: both halves ran under the same load
    other = {k: med(v) for k, v in per_call.items() if not any(w in k for w in GEMV)}
    other["(between calls)"] = outside - sum(other.values())
    top = sorted(other.items(), key=lambda kv: -kv[1])[:8]
    return {"token_ms": round(med(walls), 3), "gemv_ms": round(med(gemvs), 3), "other_ms": round(outside, 3),
            "other_calls_ms": {k: round(v, 3) for k, v in top}}


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
        token = int(np.argmax(logits))
        for _ in range(4):  # warm-up
            token = int(np.argmax(engine.decode(token)))
        result["profile"] = profile_decode(engine, token)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
