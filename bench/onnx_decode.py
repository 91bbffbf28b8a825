"""onnxruntime CPU decode speed of an `mcpm-mobile export-onnx` directory; prints one JSON object.

    python bench/onnx_decode.py DIR [--threads 2] [--prompt-tokens 32] [--decode-tokens 64]

``--engine genai`` (default when onnxruntime-genai is installed) runs it the way an Android app does:
onnxruntime-genai with past and present sharing one buffer. ``--engine ort`` is a plain onnxruntime
session with IO binding, the present KV tensors fed back as the next step's past.
Prompt ids are random (fixed seed); greedy decoding runs exactly ``--decode-tokens`` steps.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def bench_genai(out_dir: Path, threads: int, prompt: list[int], steps: int) -> dict:
    import onnxruntime_genai as og

    config = og.Config(str(out_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                         "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + steps + 1)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(np.array(prompt, np.int32))
    gen.generate_next_token()
    t1 = time.perf_counter()
    for _ in range(steps):
        gen.generate_next_token()
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "onnxruntime_genai": og.__version__}


def bench_ort(out_dir: Path, threads: int, prompt: list[int], steps: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(out_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    past_names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    kv_heads, head_dim = sess.get_inputs()[2].shape[1], sess.get_inputs()[2].shape[3]
    past = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, kv_heads, 0, head_dim), np.float32)) for n in past_names}

    def step(ids: list[int], length: int) -> int:
        binding = sess.io_binding()
        binding.bind_cpu_input("input_ids", np.array([ids], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, length), np.int64))
        for name, value in past.items():
            binding.bind_ortvalue_input(name, value)
        for o in sess.get_outputs():
            binding.bind_output(o.name, "cpu")
        sess.run_with_iobinding(binding)
        values = binding.get_outputs()
        for o, v in zip(sess.get_outputs()[1:], values[1:]):
            past[o.name.replace("present", "past_key_values")] = v
        return int(values[0].numpy()[0, -1].argmax())

    t0 = time.perf_counter()
    nxt = step(prompt, len(prompt))
    t1 = time.perf_counter()
    for i in range(steps):
        nxt = step([nxt], len(prompt) + i + 1)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--engine", choices=["genai", "ort"], default=None)
    args = ap.parse_args()
    engine = args.engine
    if engine is None:
        try:
            import onnxruntime_genai  # noqa: F401
            engine = "genai"
        except ImportError:
            engine = "ort"
    cfg = json.loads((args.onnx_dir / "genai_config.json").read_text())["model"]
    rng = np.random.default_rng(0)
    prompt = [cfg["bos_token_id"]] + rng.integers(3, cfg["vocab_size"], args.prompt_tokens - 1).tolist()
    run = bench_genai if engine == "genai" else bench_ort
    r = run(args.onnx_dir, args.threads, prompt, args.decode_tokens)
    import onnxruntime

    print(json.dumps({
        "bench": "onnx_decode", "engine": engine, "dir": str(args.onnx_dir), "threads": args.threads,
        "prompt_tokens": len(prompt), "decode_tokens": args.decode_tokens,
        "prefill_tokens_per_s": round(len(prompt) / r["prefill_s"], 3),
        "decode_tokens_per_s": round(args.decode_tokens / r["decode_s"], 3),
        "weights_bytes": (args.onnx_dir / "model.onnx.data").stat().st_size,
        "onnxruntime": onnxruntime.__version__, "onnxruntime_genai": r.get("onnxruntime_genai"),
        "cpu": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
