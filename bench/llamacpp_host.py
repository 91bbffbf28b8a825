"""llama.cpp (llama-cpp-python) host CPU speed on a GGUF, measured like ``bench/host_2b.py``; prints JSON.

    .venv/bin/python bench/llamacpp_host.py /work/bench2b-q4_0.gguf [--threads 2] [--prefill 128] [--decode 128]

Same protocol as our host bench: a ``--prefill``-token prompt of random ids (fixed seed, ids 3..999)
evaluated in one batch (prefill tok/s = prompt tokens / wall time of that call), then one warm-up
decode step, then ``--decode`` greedy steps of one token each (argmax of the logits, read back to
Python every step as our bench does). ``n_threads`` and ``n_threads_batch`` are both ``--threads``.
Make the GGUF with ``mcpm-mobile export-gguf CKPT -o OUT.gguf --type q4_0``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import llama_cpp
    import numpy as np

    n_ctx = args.prefill + args.decode + 16
    llm = llama_cpp.Llama(args.gguf, n_ctx=n_ctx, n_batch=max(args.prefill, 32), n_ubatch=max(args.prefill, 32),
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    rng = np.random.default_rng(args.seed)
    ids = [int(x) for x in rng.integers(3, 1000, args.prefill)]

    def logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))

    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t
    tok = int(np.argmax(logits()))
    llm.eval([tok])  # warm-up
    tok = int(np.argmax(logits()))
    t = time.perf_counter()
    for _ in range(args.decode):
        llm.eval([tok])
        tok = int(np.argmax(logits()))
    decode_s = time.perf_counter() - t
    result = {"engine": f"llama-cpp-python {llama_cpp.__version__}", "gguf": args.gguf,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": args.threads,
              "prefill_tokens": args.prefill, "prefill_tok_s": round(args.prefill / prefill_s, 2),
              "decode_tokens": args.decode, "decode_tok_s": round(args.decode / decode_s, 2),
              "decode_ms_per_token": round(decode_s / args.decode * 1e3, 1),
              "finite": bool(np.isfinite(logits()).all())}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
