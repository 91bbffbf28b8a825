"""Host read bandwidth (the decode roofline): a TVM kernel that streams a large uint32 array once.

    .venv/bin/python bench/bandwidth.py [--threads 2] [--mib 1024]

The kernel reads ``--mib`` MiB (far larger than the caches) the way the decode GEMVs read their weights:
rows split across threads, 16-lane vector loads, an integer reduction so nothing is written back. The
best of several runs is reported in GB/s (1e9 bytes/s); the numpy ``sum`` of the same array (one
thread) is printed for comparison. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import tvm
    from tvm import s_tir, te

    from mcpm_mobile.compiler.compile import resolve_target

    cols = 4096
    rows = args.mib * 2 ** 20 // (cols * 4)
    a = te.placeholder((rows, cols), "uint32", "a")
    r = te.reduce_axis((0, cols // 16), "r")
    part = te.compute((rows, 16), lambda i, j: te.sum(a[i, r * 16 + j], axis=r), name="part")
    sch = s_tir.Schedule(te.create_prim_func([a, part]).with_attr("global_symbol", "main"))
    blk = sch.get_sblock("part")
    i, j, k = sch.get_loops(blk)
    sch.reorder(i, k, j)
    sch.parallel(i)
    sch.vectorize(j)
    target = resolve_target("host")
    lib = tvm.compile(sch.mod, target)
    dev = tvm.cpu()
    host = np.random.default_rng(0).integers(0, 2 ** 32, size=(rows, cols), dtype=np.uint32)
    ta, tp = tvm.runtime.tensor(host, dev), tvm.runtime.tensor(np.zeros((rows, 16), np.uint32), dev)
    ev = lib.mod.time_evaluator("main", dev, number=5, repeat=3)
    best = min(ev(ta, tp).results)
    t = time.perf_counter()
    host.sum()
    np_s = time.perf_counter() - t
    print(json.dumps({"threads": args.threads, "bytes": host.nbytes, "tvm_read_gb_s": round(host.nbytes / best / 1e9, 1),
                      "numpy_sum_1thread_gb_s": round(host.nbytes / np_s / 1e9, 1)}, indent=2))


if __name__ == "__main__":
    main()
