"""The Android OpenCL model run whole on an OpenCL device (tests/opencl_model.py), and our OpenCL
device for TVM's runtime (runtime/opencl) on its own."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=HERE)


@pytest.fixture(scope="module")
def pocl_env(tmp_path_factory):
    why = _missing()
    if why is None and not Path("/etc/OpenCL/vendors/pocl.icd").is_file():
        why = "PoCL is not installed (make sysdeps)"
    if why:
        pytest.skip(why)
    return _device_env(tmp_path_factory.mktemp("pocl"), "Portable")


def test_device_api_allocates_copies_and_launches(pocl_env):
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

lib = tvm.compile(tvm.IRModule({"axpb": axpb}), target=tvm.target.Target({"kind": "opencl", "host": {"kind": "llvm"}}))
lib["axpb"](x, y, 3, 0.5)
out["kernel"] = bool(np.allclose(y.numpy(), a * 0.5 + 3))
print(json.dumps(out))
'''
    r = _run(code, pocl_env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"exist": True, "name": out["name"], "roundtrip": True, "kernel": True}, out
    assert "pthread" in out["name"] or "PoCL" in out["name"]


def test_no_device_is_a_clear_error(tmp_path):
    if _missing():
        pytest.skip(_missing())
    env = _device_env(tmp_path, "no-such-platform")
    r = _run("from mcpm_mobile.runtime import opencl\nopencl.device_name()", env)
    assert r.returncode != 0
    assert "no OpenCL platform named like 'no-such-platform' has a device" in r.stderr


@pytest.mark.slow
def test_android_opencl_model_matches_reference(tmp_path):
    """Every case of tests/opencl_model.py on Oclgrind: the OpenCL module is byte-identical to the
    android .tar's, logits of prefill (two chunks) and decode match the numpy reference, greedy
    tokens are equal. Oclgrind (an OpenCL simulator) rather than PoCL: see docs/opencl.md."""
    why = _missing() or (None if OCLGRIND_ICD.is_file() else "oclgrind is not installed (make sysdeps)")
    if why:
        pytest.skip(why)
    env = _device_env(tmp_path, "Oclgrind")
    r = subprocess.run([sys.executable, str(HERE / "opencl_model.py"), "--json", "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, env=env)
    assert r.stdout.strip(), r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert "Oclgrind" in report["device"]
    cases = {c["case"]: c for c in report["results"]}
    assert len(cases) == 8
    for name, c in cases.items():
        assert c["opencl_module_identical"], name
        assert c["max_rel_err"] <= c["tolerance"], (name, c["max_rel_err"])
        assert c["argmax_equal"] and c["greedy_equal"], (name, c["greedy_tokens"], c["greedy_reference"])
        assert c["ok"], name
    assert r.returncode == 0
    assert np.isfinite([c["max_rel_err"] for c in cases.values()]).all()
