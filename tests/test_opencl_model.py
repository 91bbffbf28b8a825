"""The Android OpenCL model run whole on an OpenCL device (tests/opencl_model.py), and our OpenCL
device for TVM's runtime (runtime/opencl) on its own."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
OCLGRIND_ICD = Path("/usr/lib/oclgrind/liboclgrind-rt-icd.so")  # Debian's oclgrind; registers no ICD itself


def _missing() -> str | None:
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if not Path("/usr/include/CL/cl.h").is_file():
        return "the OpenCL headers are not installed (apt-get install ocl-icd-opencl-dev)"
    return None


def _device_env(tmp_path: Path, platform: str) -> dict:
    """Environment for a subprocess that sees one OpenCL platform: Oclgrind (an ICD file of our own,
    since Debian's package registers none) or PoCL (its system-wide ICD)."""
    env = dict(os.environ)
    if platform == "Oclgrind":
        vendors = tmp_path / "vendors"
        vendors.mkdir(exist_ok=True)
        (vendors / "oclgrind.icd").write_text(f"{OCLGRIND_ICD}\n")
        env["OCL_ICD_VENDORS"] = str(vendors)
    env["MCPM_OPENCL_PLATFORM"] = platform
    return env


def _run(code: str, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "check.py"  # a file: TVMScript reads the source of the functions it parses
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=HERE)


@pytest.fixture(scope="module")
def pocl_env(tmp_path_factory):
    why = _missing()
    if why is None and not Path("/etc/OpenCL/vendors/pocl.icd").is_file():
        why = "PoCL is not installed (make sysdeps)"
    if why:
        pytest.skip(why)
    return _device_env(tmp_path_factory.mktemp("pocl"), "Portable")


def test_device_api_allocates_copies_and_launches(pocl_env, tmp_path):
    """Our device on PoCL: tensors round-trip with offsets, device-to-device copies, and a TVM-built
    OpenCL kernel (2-D launch, int and float scalars) run through our module loader."""
    code = r'''
import json, numpy as np, tvm
from tvm.script import tirx as T
from mcpm_mobile.runtime import opencl
opencl.load()
dev = tvm.device("opencl")
out = {"exist": bool(dev.exist), "name": opencl.device_name()}
a = np.arange(24, dtype="float32").reshape(4, 6)
x = tvm.runtime.tensor(a, dev)
y = tvm.runtime.empty((4, 6), "float32", dev)
y.copyfrom(x)
out["roundtrip"] = bool((y.numpy() == a).all())

@T.prim_func
def axpb(A: T.Buffer((4, 6), "float32"), B: T.Buffer((4, 6), "float32"), n: T.int32, s: T.float32):
    for i in T.thread_binding(4, "blockIdx.x"):
        for j in T.thread_binding(6, "threadIdx.y"):
            B[i, j] = A[i, j] * s + T.Cast("float32", n)

tgt = tvm.target.Target({"kind": "opencl", "host": {"kind": "llvm"}})
built = tvm.tirx.build(tvm.IRModule({"axpb": axpb}), target=tgt)
built.export_library(LIB)
lib = tvm.runtime.load_module(LIB)  # the "opencl" module goes through our loader
lib["axpb"](x, y, 3, 0.5)
out["kernel"] = bool(np.allclose(y.numpy(), a * 0.5 + 3))
print(json.dumps(out))
'''
    r = _run(code.replace("LIB", repr(str(tmp_path / "axpb.so"))), pocl_env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"exist": True, "name": out["name"], "roundtrip": True, "kernel": True}, out
    assert "pthread" in out["name"] or "PoCL" in out["name"]


def test_no_device_is_a_clear_error(tmp_path):
    if _missing():
        pytest.skip(_missing())
    env = _device_env(tmp_path, "no-such-platform")
    r = _run("from mcpm_mobile.runtime import opencl\nopencl.device_name()\n", env, tmp_path)
    assert r.returncode != 0
    assert "no OpenCL platform named like 'no-such-platform' has a device" in r.stderr


@pytest.mark.slow
def test_android_opencl_model_matches_reference(tmp_path):
    """tests/opencl_model.py on Oclgrind (about 10 minutes): the OpenCL module is byte-identical to
    the android .tar's, logits of prefill (two chunks) and decode match the numpy reference, greedy
    tokens are equal. Oclgrind (an OpenCL simulator) rather than PoCL: see docs/opencl.md."""
    why = _missing() or (None if OCLGRIND_ICD.is_file() else "oclgrind is not installed (make sysdeps)")
    if why:
        pytest.skip(why)
    env = _device_env(tmp_path, "Oclgrind")
    cases = [f"{v}:q4f32_1" for v in ("mha_tied", "gqa_untied", "gqa_tied", "mha_untied")]
    cases += ["mha_tied:q4f16_1", "gqa_untied:q4f16_1"]  # fp16: the module identity (no cl_khr_fp16 here)
    r = subprocess.run([sys.executable, str(HERE / "opencl_model.py"), "--json", "--work", str(tmp_path / "work"),
                        *(a for c in cases for a in ("--case", c))], capture_output=True, text=True, env=env)
    assert r.stdout.strip(), r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert "Oclgrind" in report["device"]
    results = {c["case"]: c for c in report["results"]}
    assert sorted(results) == sorted(cases)
    for name, c in results.items():
        assert c["opencl_module_identical"], name
        if name.endswith("q4f16_1") and c["ok"] is None:  # Oclgrind has no cl_khr_fp16
            assert "cl_khr_fp16" in c["not_run"]
            continue
        assert c["max_rel_err"] <= c["tolerance"], (name, c["max_rel_err"])
        assert c["argmax_equal"] and c["greedy_equal"], (name, c["greedy_tokens"], c["greedy_reference"])
        assert c["ok"] is True, name
    assert all(results[c]["ok"] is True for c in cases if c.endswith("q4f32_1"))
    assert r.returncode == 0


def test_merge_state_kernel_matches_numpy(pocl_env, tmp_path):
    """Our attention-merge kernel (compiler/gpu.py, replacing TVM 0.27's racy one) on PoCL, where
    work-items of a group run one after another and the race would show."""
    code = r'''
import json, numpy as np, tvm
from mcpm_mobile.compiler import gpu
from mcpm_mobile.runtime import opencl
opencl.load()
tgt = tvm.target.Target({"kind": "opencl", "host": {"kind": "llvm"}})
errs = []
for heads, dim in ((4, 16), (3, 32), (2, 64)):
    f = gpu.merge_state_kernel(heads, dim, "float32", tgt).with_attr("global_symbol", "merge")
    path = LIB.replace(".so", f"{dim}.so")  # never overwrite a loaded library
    tvm.tirx.build(tvm.IRModule({"merge": f}), target=tgt).export_library(path)
    lib = tvm.runtime.load_module(path)
    dev, rng = tvm.device("opencl"), np.random.default_rng(dim)
    v, vo = rng.standard_normal((2, 5, heads, dim)).astype("float32")
    s, so = (4 * rng.standard_normal((2, 5, heads))).astype("float32")
    args = [tvm.runtime.tensor(a, dev) for a in (v, s, vo, so)]
    lib["merge"](*args)
    m = np.maximum(s, so)
    a, b = np.exp2(s - m), np.exp2(so - m)
    want_v = (v * a[..., None] + vo * b[..., None]) / (a + b)[..., None]
    errs.append(max(float(np.abs(args[0].numpy() - want_v).max()),
                    float(np.abs(args[1].numpy() - (np.log2(a + b) + m)).max())))
print(json.dumps(errs))
'''
    r = _run(code.replace("LIB", repr(str(tmp_path / "merge.so"))), pocl_env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert max(json.loads(r.stdout.strip().splitlines()[-1])) < 1e-5
