"""An OpenCL device for the apache-tvm wheel, whose runtime has none: ``load()`` builds
``tvm_opencl.cc`` (g++, OpenCL headers and ICD loader) against the wheel's own headers and
libraries, once per source and TVM version, and loads it into this process.

After ``load()``, ``tvm.device("opencl")`` exists and a model library compiled for an OpenCL
target with an x86 host (``mcpm-mobile compile --target opencl-x86``) runs on the first OpenCL
platform (``MCPM_OPENCL_PLATFORM=<name part>`` picks one, e.g. ``Portable`` for PoCL).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mcpm_mobile.errors import MCPMError
from mcpm_mobile.support.cache import cache_dir

SOURCE = Path(__file__).with_name("tvm_opencl.cc")
LIBRARY = "libmcpm_tvm_opencl.so"
CXX_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unused-function"]
INSTALL_HINT = "apt-get install g++ ocl-icd-opencl-dev pocl-opencl-icd"
_loaded: Path | None = None


def _wheel_paths() -> tuple[Path, Path]:
    import tvm
    import tvm_ffi

    return Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent


def build(out_dir: Path | None = None) -> Path:
    """Compile the device library (a few seconds) unless an identical build exists; its path."""
    import tvm
    import tvm_ffi

    tvm_dir, ffi_dir = _wheel_paths()
    key = hashlib.sha256(SOURCE.read_bytes() + f"{tvm.__version__} {tvm_ffi.__version__}".encode()).hexdigest()[:16]
    target = Path(out_dir or cache_dir("opencl")) / key / LIBRARY
    if target.is_file():
        return target
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise MCPMError(f"building the OpenCL device for TVM needs a C++ compiler ({INSTALL_HINT})")
    if not Path("/usr/include/CL/cl.h").is_file() and "CPATH" not in os.environ:
        raise MCPMError(f"building the OpenCL device for TVM needs the OpenCL headers ({INSTALL_HINT})")
    target.parent.mkdir(parents=True, exist_ok=True)
    libs = [str(tvm_dir / "lib"), str(ffi_dir / "lib")]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_lib = Path(tmp) / LIBRARY
        cmd = [cxx, *CXX_FLAGS, str(SOURCE), "-o", str(tmp_lib), "-I", str(tvm_dir / "include"),
               "-I", str(ffi_dir / "include"), *(f"-L{d}" for d in libs), *(f"-Wl,-rpath,{d}" for d in libs),
               "-ltvm_runtime", "-ltvm_ffi", "-lOpenCL"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise MCPMError(f"building {SOURCE.name} failed ({INSTALL_HINT}?):\n{r.stderr[-4000:]}")
        os.replace(tmp_lib, target)
    return target


def load() -> Path:
    """Register TVM's ``device_api.opencl`` and the ``opencl`` module loader in this process."""
    global _loaded
    import tvm

    if _loaded is not None:
        return _loaded
    if tvm.get_global_func("device_api.opencl", allow_missing=True) is not None:
        raise MCPMError("this TVM runtime already has an OpenCL device; use it directly")
    path = build()
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    _loaded = path
    return path


def device_name() -> str:
    """'<device> (<OpenCL version>)' of the device used, or an MCPMError saying why there is none."""
    import tvm

    load()
    try:
        return str(tvm.get_global_func("mcpm.opencl.device_name")())
    except Exception as e:  # noqa: BLE001 - a tvm_ffi error from the C++ side
        raise MCPMError(str(e).splitlines()[-1])


def device_extensions() -> set[str]:
    """The OpenCL extensions of the device used (``cl_khr_fp16`` decides whether float16 models run)."""
    import tvm

    device_name()
    return set(str(tvm.get_global_func("mcpm.opencl.device_extensions")()).split())
