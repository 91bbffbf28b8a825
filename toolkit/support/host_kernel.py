"""Pieces shared by the compiled host kernels (``quantize/kernel.py``, ``formats/gguf_kernels.py``).

TIR expression helpers (lane folds, stored-dtype loads, NaN/Inf bit tests), the host target, and
:func:`compiled`: a kernel built by TVM once per machine, kept as a shared library in a per-user cache
(keyed by the kernel's source files, the installed TVM and the CPU) and loaded in later processes through
``tvm_ffi`` alone, so that a conversion pays neither ``import tvm`` (about half a second) nor the build.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

SOURCE = {"BF16": "uint16", "F16": "float16", "F32": "float32"}  # stored dtype -> kernel input (bf16 as its bits)
F32_MAX = 3.4028234663852886e38
CACHE_ENV = "MCPM_MOBILE_KERNEL_CACHE"  # a directory, or "off" to build in every process


def fold(v, lanes: int, op, tirx, bind: bool = True):
    """Combine lanes 2i and 2i+1 (``lanes`` -> ``lanes // 2``); repeated, a pairwise tree over the lanes.
    With ``bind``, ``v`` is bound to a variable first, so that nested folds stay linear in size (floats only:
    TVM's analyzer cannot bind a vector that holds a boolean cast)."""
    if not bind:
        return op(tirx.Shuffle([v], list(range(0, lanes, 2))), tirx.Shuffle([v], list(range(1, lanes, 2))))
    var = tirx.Var("f", v.ty)
    return tirx.Let(var, v, fold(var, lanes, op, tirx, bind=False))


def fold_all(v, lanes: int, op, tirx, until: int = 1, bind: bool = True):
    while lanes > until:
        v, lanes = fold(v, lanes, op, tirx, bind), lanes // 2
    return v


def any_lane(buf_load, lanes: int, tirx):
    """OR of the lanes of an int32 vector (a buffer load: cheap to repeat, so nothing is bound)."""
    return fold_all(buf_load, lanes, lambda a, b: a | b, tirx, bind=False)


def first_abs_max(v, lanes: int, T, tirx):
    """The value of largest magnitude, the first one on a tie (numpy's ``argmax(abs(v))``)."""
    return fold_all(v, lanes, lambda a, b: T.Select(T.fabs(a) >= T.fabs(b), a, b), tirx)


def load_f32(v, source: str, lanes: int, T):
    """Stored lanes (``SOURCE`` values) as float32, exactly."""
    if source == "uint16":
        return T.reinterpret(f"float32x{lanes}", T.shift_left(T.Cast(f"uint32x{lanes}", v),
                                                              T.Broadcast(T.uint32(16), lanes)))
    return T.Cast(f"float32x{lanes}", v) if source != "float32" else v


def not_finite(x, lanes: int, T):
    """Per lane: NaN or Inf, by the exponent bits (LLVM may fold ``x != x`` under fast-math)."""
    if lanes == 1:
        return (T.reinterpret("uint32", x) & T.uint32(0x7F800000)) == T.uint32(0x7F800000)
    exp = T.Broadcast(T.uint32(0x7F800000), lanes)
    return (T.reinterpret(f"uint32x{lanes}", x) & exp) == exp


def no_fma(product, lanes: int, T):
    """``product`` with a barrier before an add: TVM's LLVM backend contracts ``a * b + c`` into one FMA
    (one rounding), numpy rounds the product first. ``min(p, FLT_MAX)`` keeps finite products as they are."""
    return T.min(product, T.Broadcast(T.float32(F32_MAX), lanes)) if lanes > 1 else T.min(product, T.float32(F32_MAX))


def host_target():
    from tvm.target import Target, codegen

    return Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "mtriple": codegen.llvm_get_system_triple()})


def build_prim_func(func):
    """A TVMScript PrimFunc -> the compiled host module."""
    import tvm

    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), host_target())


def _tvm_dir() -> Path | None:
    spec = importlib.util.find_spec("tvm")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _machine() -> bytes:
    """What decides which instructions a kernel may use: the CPU's flags (Linux) or its name."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        lines = [ln for ln in info if ln.startswith(("flags", "Features", "model name"))][:3]
    except OSError:
        lines = []
    return "\n".join([platform.machine(), platform.processor(), *lines]).encode()


def cache_dir() -> Path | None:
    where = os.environ.get(CACHE_ENV)
    if where == "off":
        return None
    if where:
        return Path(where)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mcpm-mobile" / "kernels"


def cache_key(name: str, sources: tuple[Path, ...]) -> str | None:
    """Hash of the kernel's name, its source files, the installed TVM (its libraries' sizes and times) and the CPU."""
    tvm_dir = _tvm_dir()
    if tvm_dir is None:
        return None
    h = hashlib.sha256(name.encode() + b"\0" + _machine())
    for f in sources:
        h.update(Path(f).read_bytes())
    for lib in sorted((tvm_dir / "lib").glob("libtvm*.so*")) + sorted((tvm_dir / "lib").glob("libtvm*.dylib")):
        st = lib.stat()
        h.update(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:32]


@functools.cache
def _runtime_loaded() -> bool:
    """Load TVM's runtime library (thread pool, workspace) into the process, as ``import tvm`` would."""
    import tvm_ffi  # noqa: F401 - loads libtvm_ffi, which the runtime links to

    tvm_dir = _tvm_dir()
    for name in ("libtvm_runtime.so", "libtvm_runtime.dylib"):
        if tvm_dir is not None and (tvm_dir / "lib" / name).exists():
            ctypes.CDLL(str(tvm_dir / "lib" / name), ctypes.RTLD_GLOBAL)
            return True
    return False


def compiled(name: str, sources: tuple[Path, ...], build):
    """The function ``main`` of the kernel ``build()`` makes (a PrimFunc), from the cache when it is there.

    A miss builds it (importing TVM), writes the shared library under a temporary name and renames it into
    place, so concurrent processes never see half a file. Without a usable cache directory the kernel is
    built and used in memory. Raises when TVM or a C compiler is missing (the caller falls back to numpy)."""
    where, key = cache_dir(), cache_key(name, sources)
    path = where / f"{name}-{key}.so" if where is not None and key is not None else None
    if path is not None and path.is_file() and _runtime_loaded():
        import tvm_ffi

        try:
            return tvm_ffi.load_module(str(path))["main"]
        except Exception:  # noqa: BLE001 - an unloadable file (another loader, a damaged disk): build it anew
            pass
    module = build_prim_func(build())
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=path.parent)
            os.close(fd)
            try:
                module.export_library(tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except Exception:  # noqa: BLE001 - read-only home, full disk, no C compiler to link: this process still has it
            pass
    return module["main"]


def tensor(arr: np.ndarray):
    """A zero-copy ``tvm_ffi`` tensor over ``arr``, read-only memory maps included (DLPack 1.0 carries the flag)."""
    import tvm_ffi

    if arr.flags.writeable:
        return tvm_ffi.from_dlpack(arr)
    return tvm_ffi.from_dlpack(arr.__dlpack__(max_version=(1, 0)))
