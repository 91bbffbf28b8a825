"""The host CPU's INT4 kernels alone, float (``quantized_linear`` + ``schedules``) beside int8-VNNI (``compiler/vnni.py``).

    .venv/bin/python bench/kernels.py [--threads 2]

For the 2B shapes: the decode GEMV (one row) with weights streamed from DRAM (copies of W and its
scales rotated so that nothing stays in cache; GB/s counts codes + scales), and the prefill matmul
(128 rows, GOP/s = 2 * M * N * K / time). Best of 6 alternating rounds. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

SHAPES = {"gate_up": (11520, 2304), "wqkv": (6912, 2304), "down": (2304, 5760), "lm_head": (122753, 2304)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=128, help="prefill rows")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import tvm
    from tvm import te
    from tvm.target import codegen

    from mcpm_mobile.compiler import vnni
    from mcpm_mobile.compiler.compile import resolve_target
    from mcpm_mobile.compiler.schedules import CPUDequantizeMatmul
    from mcpm_mobile.model.quantized_linear import _matmul_te

    target = resolve_target("host")
    if not codegen.target_has_features(["avx512vnni", "avx512vl", "avx512bw"], target):
        raise SystemExit("bench/kernels.py: this CPU has no AVX-512 VNNI")
    dev = tvm.cpu()
    rng = np.random.default_rng(0)

    def build(func):
        return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)["main"]

    def float_kernel(n, k, lead):
        x = te.placeholder((*lead, k), "float16", "x")
        w, s = te.placeholder((n, k // 8), "uint32", "w"), te.placeholder((n, k // 32), "float16", "s")
        f = te.create_prim_func([x, w, s, _matmul_te("NK", n, k, "float16")(x, w, s)])
        f = f.with_attrs({"mcpm.kernel": "dequantize_matmul", "mcpm.layout": "NK"})
        return build(CPUDequantizeMatmul()._grouped_gemv(f, 16).mod["main"] if lead == (1, 1) else
                     CPUDequantizeMatmul()._matmul(tvm.s_tir.Schedule(f), 16, "NK").mod["main"])

    def best_of(kernels, call):
        best = {name: float("inf") for name in kernels}
        for _ in range(6):
            for name, fn in kernels.items():
                best[name] = min(best[name], call(fn))
        return best

    result = {"threads": args.threads, "gemv_dram": {}, "matmul": {}}
    for name, (n, k) in SHAPES.items():
        kernels = {"float": float_kernel(n, k, (1, 1)),
                   "int8_vnni": build(vnni.gemv(n, k, (1, 1), "float16", "float16", "float16"))}
        x = tvm.runtime.tensor(rng.standard_normal((1, 1, k)).astype(np.float16), dev)
        o = tvm.runtime.tensor(np.zeros((1, 1, n), np.float16), dev)
        nbytes = n * k // 2 + n * k // 32 * 2
        copies = [(tvm.runtime.tensor(rng.integers(0, 2 ** 32, (n, k // 8), dtype=np.uint32), dev),
                   tvm.runtime.tensor((rng.random((n, k // 32)) * 0.02).astype(np.float16), dev))
                  for _ in range(max(2, int(600e6 // nbytes)))]

        def gemv(fn, x=x, o=o, copies=copies):
            t = time.perf_counter()
            for w, s in copies:
                fn(x, w, s, o)
            return (time.perf_counter() - t) / len(copies)

        for kind, sec in best_of(kernels, gemv).items():
            result["gemv_dram"].setdefault(name, {})[kind] = {"ms": round(sec * 1e3, 3),
                                                              "gb_s": round(nbytes / sec / 1e9, 1)}
        if name == "lm_head":  # decode only
            continue
        m = tvm.tirx.Var("m", "int64")
        kernels = {"float": float_kernel(n, k, (1, m)),
                   "int8_vnni": build(vnni.matmul(n, k, (1, m), "float16", "float16", "float16"))}
        xm = tvm.runtime.tensor(rng.standard_normal((1, args.rows, k)).astype(np.float16), dev)
        om = tvm.runtime.tensor(np.zeros((1, args.rows, n), np.float16), dev)
        w, s = copies[0]

        def mm(fn, xm=xm, om=om, w=w, s=s):
            t = time.perf_counter()
            fn(xm, w, s, om)
            return time.perf_counter() - t

        for kind, sec in best_of(kernels, mm).items():
            result["matmul"].setdefault(name, {})[kind] = {
                "ms": round(sec * 1e3, 2), "gop_s": round(2 * args.rows * n * k / sec / 1e9)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
