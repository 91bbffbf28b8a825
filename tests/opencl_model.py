"""Run the Android GPU model whole on an OpenCL device (PoCL here) and compare it with the numpy reference.

For each tiny MiniCPM variant and quantization:
1. compile the model for ``--target android`` (the static ``.tar`` the app links) and for the same
   OpenCL target with an x86-64 host (a ``.so``), both with one system-lib prefix, and assert
   that the serialized OpenCL module (format, function table with argument types and launch
   tags, OpenCL C source) is byte-identical in the two;
2. load the ``.so`` with the wheel's TVM runtime plus our OpenCL device (``runtime/opencl``)
   and run prefill (chunked) and decode through the MLC interface and the paged KV cache;
3. compare every step's logits with the float64 numpy MiniCPM on the dequantized weights and
   the greedy continuation token by token.

    .venv/bin/python tests/opencl_model.py [--case mha_tied:q4f32_1 ...] [--work DIR] [--json]

Exit status 0 when every case matches; the per-case results are printed (``--json``: as JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from reference_numpy import ReferenceMiniCPM  # noqa: E402

from mlc_weights import dequantized_hf_weights  # noqa: E402
from mcpm_mobile.support.ar import symbol_offset  # noqa: E402

PREFILL, DECODE, GREEDY = 11, 6, 12
CHUNK, CONTEXT = 8, 64  # 11 prompt tokens -> two prefill chunks (8 + 3)
TOL = {"q4f32_1": 1e-4, "q4f16_1": 2e-2}  # relative to max |logit|, as the host tests
VARIANTS = {  # tiny checkpoints: MHA and GQA, tied and untied, head_dim 16, 32 and 64 (MiniCPM 2B's)
    "mha_tied": dict(layers=2, hidden=64, heads=4, vocab=512, tied=True, dtype="bfloat16", seed=0),
    "gqa_untied": dict(layers=2, hidden=64, heads=4, kv_heads=2, vocab=512, tied=False, dtype="float16", seed=1),
    "gqa_tied": dict(layers=2, hidden=128, heads=2, kv_heads=1, vocab=640, tied=True, dtype="float32", seed=2),
    "mha_untied": dict(layers=2, hidden=96, heads=3, vocab=512, tied=False, dtype="bfloat16", seed=3),
}
CASES = [f"{v}:{q}" for q in ("q4f32_1", "q4f16_1") for v in VARIANTS]


def x86_opencl_target() -> dict:
    """The android preset's OpenCL target with an x86-64 Android host (the ABI of Android's x86_64
    emulator) instead of aarch64: dlight and TVM's KV-cache kernels pick their Android schedules when
    the host triple says ``android``, and x86-64 code links and runs on this Linux machine."""
    from mcpm_mobile.target import TARGETS

    return dict(TARGETS["android"].tvm, host={"kind": "llvm", "mtriple": "x86_64-linux-android"})


# --- the serialized OpenCL module in a library ------------------------------------------------
def device_modules(blob_owner: bytes, symbol: str) -> dict[str, bytes]:
    """{module kind: serialized bytes} of the TVM library blob at ``symbol`` (tvm-ffi's layout:
    u64 size, import tree (two u64 vectors), then (kind, payload) pairs, "_lib" without payload)."""
    pos = symbol_offset(blob_owner, symbol)
    if pos is None:
        raise ValueError(f"symbol {symbol} not found")
    size, = struct.unpack_from("<Q", blob_owner, pos)
    data, p = blob_owner[pos + 8:pos + 8 + size], 0

    def u64():
        nonlocal p
        v, = struct.unpack_from("<Q", data, p)
        p += 8
        return v

    def chunk():
        nonlocal p
        n = u64()
        p += n
        return data[p - n:p]

    for _ in range(2):
        n = u64()
        p += 8 * n
    out = {}
    while p < len(data):
        kind = chunk().decode()
        if kind != "_lib":
            out[kind] = chunk()
    return out


def prefix(variant: str, quantization: str) -> str:
    """The system-lib prefix of a case: one per case, as a process holds one library per prefix."""
    return f"mcpm_ocl_{variant}_{quantization}_"


def opencl_module_of(tar: Path, prefix: str) -> bytes:
    from mcpm_mobile.compiler.library import LIBRARY_BIN, tar_members

    obj = next(o for n, o in tar_members(tar) if n.endswith("devc.o"))
    return device_modules(obj, prefix + LIBRARY_BIN)["opencl"]


# --- one case -----------------------------------------------------------------------------
def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def link_system_lib(tar: Path, so: Path) -> None:
    """Link the objects of a system-library ``.tar`` into ``so`` (as an app links the phone archive
    with --whole-archive); loading ``so`` registers the library under its prefix."""
    import tvm
    import tvm_ffi

    from mcpm_mobile.compiler.library import tar_members

    libs = [Path(tvm.__file__).parent / "lib", Path(tvm_ffi.__file__).parent / "lib"]
    with tempfile.TemporaryDirectory() as tmp:
        objs = []
        for name, data in tar_members(tar):
            objs.append(Path(tmp) / Path(name).name)
            objs[-1].write_bytes(data)
        tmp_so = Path(tmp) / so.name
        subprocess.run(["g++", "-shared", "-o", str(tmp_so), *map(str, objs), *(f"-L{d}" for d in libs),
                        *(f"-Wl,-rpath,{d}" for d in libs), "-ltvm_runtime", "-ltvm_ffi"], check=True)
        os.replace(tmp_so, so)


def build_case(variant: str, quantization: str, work: Path) -> tuple[Path, Path, Path, Path]:
    """(weights dir, android .tar, x86-64 .tar, x86-64 .so linked from it) of one case, in ``work``."""
    from mcpm_mobile.compiler.compile import lower, write_library
    from mcpm_mobile.model.tiny import write_tiny_checkpoint
    from mcpm_mobile.quantize.convert import quantize_checkpoint

    ckpt = work / variant
    if not ckpt.is_dir():
        write_tiny_checkpoint(ckpt, **VARIANTS[variant])
    weights = work / f"{variant}-{quantization}"
    if not weights.is_dir():
        quantize_checkpoint(ckpt, weights, quantization)
    limits = dict(context_window=CONTEXT, prefill_chunk=CHUNK, system_lib_prefix=prefix(variant, quantization))
    tar, x86_tar, so = weights / "android.tar", weights / "opencl-x86_64.tar", weights / "opencl-x86_64.so"
    if not tar.is_file():
        write_library(lower(weights, "android", **limits), tar, True)
    if not x86_tar.is_file():
        write_library(lower(weights, json.dumps(x86_opencl_target()), **limits), x86_tar, True)
    if not so.is_file():
        link_system_lib(x86_tar, so)
    return weights, tar, x86_tar, so


def run_case(variant: str, quantization: str, work: Path) -> dict:
    from mcpm_mobile.runtime import opencl
    from mcpm_mobile.runtime.engine import Engine

    t0 = time.perf_counter()
    weights, tar, x86_tar, so = build_case(variant, quantization, work)
    compile_s = time.perf_counter() - t0
    android_cl, x86_cl = (opencl_module_of(t, prefix(variant, quantization)) for t in (tar, x86_tar))
    result = {"case": f"{variant}:{quantization}", "opencl_module_bytes": len(android_cl),
              "opencl_module_identical": android_cl == x86_cl, "compile_s": round(compile_s, 1)}
    if not result["opencl_module_identical"]:
        result["ok"] = False
        return result
    if quantization.endswith(("f16_0", "f16_1")) and "cl_khr_fp16" not in opencl.device_extensions():
        result.update(ok=None, not_run="the OpenCL device has no cl_khr_fp16 (float16 arithmetic)")
        return result

    ref = ReferenceMiniCPM(*dequantized_hf_weights(weights))
    vocab = ref.w["model.embed_tokens.weight"].shape[0]
    rng = np.random.default_rng(11)
    ids = [int(x) for x in rng.integers(3, vocab, PREFILL)]
    dec = [int(x) for x in rng.integers(3, vocab, DECODE)]
    t1 = time.perf_counter()
    engine = Engine(weights, so, device="opencl", system_lib_prefix=prefix(variant, quantization))
    engine.reset()
    got = [engine.prefill(ids)] + [engine.decode(t) for t in dec]
    want = ref.logits(ids + dec)[PREFILL - 1:]
    errs = [rel_err(g, w) for g, w in zip(got, want)]
    argmax_equal = all(int(np.argmax(g)) == int(np.argmax(w)) for g, w in zip(got, want))
    r = engine.generate(prompt_ids=ids, max_tokens=GREEDY, temperature=0, repetition_penalty=1.0,
                        stop_token_ids=[], stop_strings=[])
    greedy_ref = ref.greedy(ids, GREEDY)
    result.update({
        "steps": len(got), "max_rel_err": max(errs), "max_abs_err": float(max(
            np.abs(np.asarray(g, np.float64) - w).max() for g, w in zip(got, want))),
        "tolerance": TOL[quantization], "argmax_equal": argmax_equal,
        "greedy_tokens": r.token_ids, "greedy_reference": greedy_ref, "greedy_equal": r.token_ids == greedy_ref,
        "run_s": round(time.perf_counter() - t1, 1)})
    result["ok"] = bool(result["max_rel_err"] <= TOL[quantization] and argmax_equal and result["greedy_equal"])
    return result


def summary(r: dict) -> str:
    if not r["opencl_module_identical"]:
        return f"{r['case']:22s} FAIL: the OpenCL module differs from the android .tar's"
    if r["ok"] is None:
        return f"{r['case']:22s} not run: {r['not_run']} (OpenCL module identical, {r['opencl_module_bytes']} B)"
    return (f"{r['case']:22s} {'ok  ' if r['ok'] else 'FAIL'} OpenCL module identical ({r['opencl_module_bytes']} B), "
            f"max rel err {r['max_rel_err']:.2e} (tol {r['tolerance']:.0e}), argmax "
            f"{'=' if r['argmax_equal'] else '!='}, greedy {'=' if r['greedy_equal'] else '!='} reference "
            f"{r['greedy_tokens']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", choices=CASES, help="variant:quantization (default: all)")
    ap.add_argument("--work", type=Path, help="where to keep checkpoints and libraries (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from mcpm_mobile.runtime import opencl

    device = opencl.device_name()
    if not args.json:
        print(f"OpenCL device: {device}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in args.case or CASES:
            results.append(run_case(*case.split(":"), work))
            if not args.json:
                print(summary(results[-1]), flush=True)
    if args.json:
        print(json.dumps({"device": device, "results": results}, indent=1))
    return 0 if all(r["ok"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
