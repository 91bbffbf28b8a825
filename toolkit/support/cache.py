"""The per-user cache (``$MCPM_CACHE_DIR``, else ``$XDG_CACHE_HOME/mcpm-mobile``): compiled host kernels and
the OpenCL device library, each keyed by what it was built from.

A cached kernel is a shared library loaded through ``tvm_ffi`` alone: importing all of ``tvm`` (about 0.6 s,
most of what a short conversion spends outside its work) and compiling (0.2-1 s per kernel) happen only the
first time on a machine. The key covers the kernel's source text, the TVM version and this CPU (kernels are
compiled for it), so a different machine sharing the cache builds its own. Entries are written atomically;
one that does not load is rebuilt.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

from mcpm_mobile.errors import MCPMError
from mcpm_mobile.support.elf import check_library_file


def cache_dir(kind: str) -> Path:
    root = os.environ.get("MCPM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mcpm-mobile")
    return Path(root) / kind


@functools.cache
def _machine() -> str:
    """The TVM version and what the host kernels are compiled for (the CPU's model and feature flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = "".join(sorted({ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))}))
    except OSError:  # no /proc (not Linux): the machine name and TVM version still key the entry
        cpu = ""
    return f"{metadata.version('apache-tvm')} {platform.machine()} {cpu}"


def kernel_key(name: str, source: str) -> str:
    return f"{name}-" + hashlib.sha256(f"{source}\n{_machine()}".encode()).hexdigest()[:20]


def _load_runtime() -> None:
    """The TVM runtime's symbols (thread pool, workspace) for kernels loaded without ``import tvm``."""
    spec = metadata.distribution("apache-tvm").locate_file("tvm/lib/libtvm_runtime.so")
    ctypes.CDLL(str(spec), mode=ctypes.RTLD_GLOBAL)


def cached_kernel(name: str, source: str, build: Callable[[], object], entry: str = "main"):
    """Function ``entry`` of the kernel ``build()`` compiles (a TVM module), from the cache when it is there.

    ``source`` is everything the kernel depends on (its generating code and parameters). Where the cache
    cannot be written, the kernel is built in memory, as without a cache."""
    path = cache_dir("kernels") / f"{kernel_key(name, source)}.so"
    cached = _load(path, entry)
    if cached is not None:
        return cached
    module = build()
    _store(module, path)
    return module[entry]


def _load(path: Path, entry: str):
    """The function ``entry`` of the cached library ``path``; None when there is none or it is damaged."""
    import tvm_ffi

    if not path.is_file():
        return None
    try:
        check_library_file(path)
        _load_runtime()
        return tvm_ffi.load_module(str(path))[entry]
    except (MCPMError, OSError, RuntimeError):
        return None


def _store(module, path: Path) -> bool:
    """Link ``module`` into the cache at ``path`` (renamed into place complete); False where it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            staged = Path(tmp) / path.name
            module.export_library(str(staged))
            os.replace(staged, path)
    except Exception:  # noqa: BLE001 - no linker, a read-only cache...: the kernel still runs, uncached
        return False
    return True
