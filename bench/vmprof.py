"""Build and load ``vmprof.cc``, the Relax VM's per-call timer in C++ (the VM has no profiler in TVM 0.27).

    prof = VMProfiler()            # compiles vmprof.cc once per source/ffi version (a C++ compiler, ~5 s)
    with prof.attached(vm):
        vm["decode"](...)
    prof.report()                  # {callee name: (calls, seconds)}

A Python instrument costs a few microseconds per call, charged to whatever it times; this one costs a
clock read and a hash-map update (~0.1 us).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("vmprof.cc")


def _build() -> Path:
    import tvm_ffi

    root = Path(tvm_ffi.__file__).parent
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + tvm_ffi.__version__.encode()).hexdigest()[:16]
    so = Path(tempfile.gettempdir()) / f"mcpm-vmprof-{key}.so"
    if so.is_file():
        return so
    tmp = so.with_name(f"{so.name}.{os.getpid()}.tmp")
    cxx = os.environ.get("CXX", "g++")
    subprocess.run([cxx, "-O2", "-std=c++17", "-shared", "-fPIC", str(SOURCE), "-o", str(tmp),
                    "-I", str(root / "include"), "-L", str(root / "lib"), "-ltvm_ffi",
                    f"-Wl,-rpath,{root / 'lib'}"], check=True)
    os.replace(tmp, so)
    return so


class VMProfiler:
    def __init__(self):
        import tvm

        ctypes.CDLL(str(_build()), mode=ctypes.RTLD_GLOBAL)  # its static initialiser registers the functions
        g = tvm.get_global_func
        self._instrument, self._reset, self._report = (
            g("mcpm.vmprof.instrument"), g("mcpm.vmprof.reset"), g("mcpm.vmprof.report"))

    @contextlib.contextmanager
    def attached(self, vm):
        vm.set_instrument(self._instrument)
        try:
            yield self
        finally:
            vm.set_instrument(None)

    def reset(self) -> None:
        self._reset()

    def report(self) -> dict[str, tuple[int, float]]:
        out = {}
        for line in str(self._report()).splitlines():
            name, calls, ns = line.split("\t")
            out[name] = (int(calls), int(ns) * 1e-9)
        return out
