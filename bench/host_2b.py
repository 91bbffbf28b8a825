"""Benchmark (not a test): compile a MiniCPM-2B-shaped model for the host and time decode/prefill.

    .venv/bin/python bench/host_2b.py [--quantization q4f16_1] [--prefill 128] [--decode 128] [--threads N]

No weights are needed: the 2B config alone is compiled (time and peak RSS of a fresh
``mcpm-mobile compile`` process are measured), then random uint32 codes / scales are built directly
as TVM tensors and the library's ``embed``/``prefill``/``decode`` run through the paged KV cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINICPM_2B = dict(vocab_size=122753, hidden_size=2304, num_hidden_layers=40, num_attention_heads=36,
                  num_key_value_heads=36, intermediate_size=5760, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  rope_theta=10000.0, scale_emb=12, scale_depth=1.4, dim_model_base=256, tie_word_embeddings=True,
                  model_type="minicpm", architectures=["MiniCPMForCausalLM"], torch_dtype="bfloat16")


def write_config(out: Path, quantization: str, ctx: int, chunk: int) -> None:
    from mcpm_mobile.formats import chat_config
    from mcpm_mobile.model.config import MiniCPMConfig

    cfg = chat_config.build(MiniCPMConfig.from_dict(MINICPM_2B), quantization, [], {}, None, ctx, chunk)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mlc-chat-config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def compile_timed(weights: Path, lib: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "mcpm-mobile"), "compile", str(weights), "-o", str(lib), "--quiet"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return {"compile_wall_s": round(wall, 1), "compile_peak_rss_mib": round(rss), "command": " ".join(cmd)}


def run(lib: Path, n_prefill: int, n_decode: int, seed: int = 0) -> dict:
    import numpy as np
    import tvm
    import tvm_ffi
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
    meta = json.loads(str(vm["_metadata"]()))
    rng = np.random.default_rng(seed)
    params = []
    for p in meta["params"]:
        if p["dtype"] == "uint32":
            a = rng.integers(0, 2 ** 32, size=p["shape"], dtype=np.uint32)
        elif "scale" in p["name"]:
            a = (rng.random(p["shape"], dtype=np.float32) * 0.02).astype(p["dtype"])
        elif p["name"].endswith("norm.weight"):
            a = (1 + 0.1 * rng.standard_normal(p["shape"])).astype(p["dtype"])
        else:
            a = (0.02 * rng.standard_normal(p["shape"])).astype(p["dtype"])
        params.append(tvm.runtime.tensor(a, dev))
    S, g = tvm_ffi.Shape, tvm.get_global_func
    kv = vm["create_tir_paged_kv_cache"](S([1]), S([meta["context_window_size"]]), S([meta["prefill_chunk_size"]]),
                                         S([16]), S([0]))
    g("vm.builtin.kv_state_add_sequence")(kv, 0)
    begin, end, reshape = (g("vm.builtin.kv_state_begin_forward"), g("vm.builtin.kv_state_end_forward"),
                           g("vm.builtin.reshape"))
    hidden = MINICPM_2B["hidden_size"]

    def step(fn, ids):
        nonlocal kv
        e = reshape(vm["embed"](tvm.runtime.tensor(np.asarray(ids, np.int32), dev), params), S([1, len(ids), hidden]))
        begin(kv, S([0]), S([len(ids)]), None)
        logits, kv = vm[fn](e, kv, params)
        end(kv)
        return logits.numpy()

    ids = [int(x) for x in rng.integers(3, 1000, n_prefill)]
    t = time.perf_counter()
    logits = step("prefill", ids)
    prefill_s = time.perf_counter() - t
    step("decode", [int(np.argmax(logits))])  # warm-up
    t = time.perf_counter()
    for _ in range(n_decode):
        logits = step("decode", [int(np.argmax(logits))])
    decode_s = time.perf_counter() - t
    return {"prefill_tokens": n_prefill, "prefill_tok_s": round(n_prefill / prefill_s, 2),
            "decode_tokens": n_decode, "decode_tok_s": round(n_decode / decode_s, 2),
            "decode_ms_per_token": round(decode_s / n_decode * 1e3, 1), "finite": bool(np.isfinite(logits).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantization", default="q4f16_1")
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--context-window", type=int, default=4096)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights, lib = Path(tmp) / "minicpm-2b-shape", Path(tmp) / "minicpm-2b.so"
        write_config(weights, args.quantization, args.context_window, args.prefill_chunk)
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  "quantization": args.quantization, "threads": args.threads}
        result.update(compile_timed(weights, lib))
        result.update(run(lib, args.prefill, args.decode))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
