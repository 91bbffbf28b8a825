"""llama.cpp (llama-cpp-python) host CPU speed on a GGUF, measured like ``bench/host_engine.py``; prints JSON.

    .venv/bin/python bench/llamacpp_host.py MODEL.gguf [--threads 2] [--contexts 256,1024] [--decode-tokens 128]

Per context length N: a fresh sequence (KV cache cleared), an N-token prompt of random ids (fixed seed)
evaluated with llama.cpp's default batching (n_batch 2048, n_ubatch 512; prefill tok/s = N / wall time),
one warm-up step, then ``--decode-tokens`` greedy steps of one token each (argmax of the logits read back to
Python every step, as our bench does). ``n_threads`` and ``n_threads_batch`` are both ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", default="128")
    ap.add_argument("--decode-tokens", type=int, default=128)
    args = ap.parse_args()

    import llama_cpp
    import numpy as np

    contexts = [int(c) for c in args.contexts.split(",")]
    llm = llama_cpp.Llama(args.gguf, n_ctx=max(contexts) + args.decode_tokens + 16, n_batch=2048, n_ubatch=512,
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    rng = np.random.default_rng(0)

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    llm.reset()
    llm.eval([1] + [int(x) for x in rng.integers(3, 500, 7)])  # warm up
    points = []
    for n in contexts:
        ids = [1] + [int(x) for x in rng.integers(3, 500, n - 1)]
        llm.reset()
        llm._ctx.kv_cache_clear()  # eval also drops positions >= n_tokens; be explicit
        t = time.perf_counter()
        llm.eval(ids)
        prefill_s = time.perf_counter() - t
        tok = int(np.argmax(logits()))
        t = time.perf_counter()
        for _ in range(args.decode_tokens):
            llm.eval([tok])
            tok = int(np.argmax(logits()))
        decode_s = time.perf_counter() - t
        points.append({"context": n, "prefill_tok_s": round(n / prefill_s, 2),
                       "decode_tok_s": round(args.decode_tokens / decode_s, 2)})
    print(json.dumps({"engine": f"llama-cpp-python {llama_cpp.__version__}", "threads": args.threads,
                      "decode_tokens": args.decode_tokens, "points": points,
                      "finite": bool(np.isfinite(logits()).all())}))


if __name__ == "__main__":
    main()
