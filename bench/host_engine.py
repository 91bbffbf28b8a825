"""Host inference through the real path: `Engine` on a quantized weights directory and a compiled library.

    python bench/host_engine.py WEIGHTS_DIR LIB [--prompt-tokens 128] [--decode-tokens 128] [--threads 2]

Prints JSON: prefill tokens/s for one prompt (chunked as the library allows) and greedy decode tokens/s.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("lib")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from mcpm_mobile.runtime.engine import Engine

    engine = Engine(args.weights, args.lib)
    rng = np.random.default_rng(0)
    prompt = [1] + rng.integers(3, 500, args.prompt_tokens - 1).tolist()
    engine.reset()
    engine.prefill(prompt[:8])  # warm up: first-call allocations
    engine.reset()
    t = time.perf_counter()
    logits = engine.prefill(prompt)
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.decode_tokens):
        logits = engine.decode(int(np.argmax(logits)))
    decode_s = time.perf_counter() - t
    print(json.dumps({"engine": "mcpm-mobile (TVM host library)", "threads": args.threads,
                      "prompt_tokens": args.prompt_tokens, "prefill_tok_s": round(args.prompt_tokens / prefill_s, 2),
                      "decode_tokens": args.decode_tokens, "decode_tok_s": round(args.decode_tokens / decode_s, 2)}))


if __name__ == "__main__":
    main()
