"""Checking generated OpenCL C without a phone: clang (SPIR, fp16) and PoCL (a CPU OpenCL device).

* ``split_programs``: TVM's OpenCL module source is one self-contained program per kernel, each
  starting with ``// Function: <kernel>``.
* ``clang_errors``: compile a program to SPIR with clang's OpenCL C 2.0 front end (+cl_khr_fp16).
* ``launches``: global/local sizes of the kernels of a scheduled PrimFunc, read from its thread
  bindings after TVM's own lowering (so they are exactly what the runtime would launch).
* ``run``: run one kernel on PoCL through pyopencl with numpy arrays.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CLANG = shutil.which("clang")
# -cl-ext through -Xclang: clang 14's driver does not take it directly
CLANG_FLAGS = ["-x", "cl", "-cl-std=CL2.0", "-target", "spir64-unknown-unknown", "-Xclang",
               "-finclude-default-header", "-Xclang", "-cl-ext=+cl_khr_fp16", "-c", "-emit-llvm"]
THREAD_AXES = {"blockIdx.x": ("grid", 0), "blockIdx.y": ("grid", 1), "blockIdx.z": ("grid", 2),
               "threadIdx.x": ("block", 0), "threadIdx.y": ("block", 1), "threadIdx.z": ("block", 2)}


def split_programs(source: str) -> dict[str, str]:
    parts = re.split(r"^// Function: (\S+)\n", source, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def clang_errors(program: str) -> str:
    """'' if clang compiles ``program``, else its diagnostics."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.cl"
        src.write_text(program)
        r = subprocess.run([CLANG, *CLANG_FLAGS, str(src), "-o", str(Path(tmp) / "k.bc")],
                           capture_output=True, text=True)
        return "" if r.returncode == 0 else r.stderr


def kernel_params(program: str, name: str) -> list[tuple[str, str]]:
    """(C type, name) of the parameters of ``__kernel void name(...)``."""
    m = re.search(r"__kernel void " + re.escape(name) + r"\(([^)]*)\)\s*\{", program)
    assert m, f"kernel {name} not found"
    out = []
    for p in m.group(1).split(","):
        toks = p.replace("*", " * ").split()
        out.append((" ".join(toks[:-1]), toks[-1]))
    return out


def launches(func, target) -> dict[str, tuple[list, list]]:
    """{kernel symbol: (grid extents, block extents)} of a scheduled device PrimFunc (extents as TIR
    expressions over the kernel's scalar parameters, e.g. ``seq_len``)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    name = str(func.attrs["global_symbol"])
    mod = tvm.IRModule({name: func.with_attr("target", target)})
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_cse_tir": True}):
        mod = tvm.tirx.get_default_tir_pipeline(target)[0](mod)
    out = {}
    for gv, f in mod.functions_items():
        if not str(gv.name_hint).startswith(name + "_kernel"):
            continue
        dims = {"grid": [1, 1, 1], "block": [1, 1, 1]}

        def attr(node):
            if node.attr_key == "thread_extent":
                kind, axis = THREAD_AXES[str(node.node.thread_tag)]
                dims[kind][axis] = node.value

        tvm_ffi.structural_walk(f.body, [(tirx.AttrStmt, attr)])
        out[gv.name_hint] = (dims["grid"], dims["block"])
    return out


def evaluate(extents: list, values: dict[str, int]) -> list[int]:
    """Integer launch sizes for ``values`` of the kernel's scalar parameters."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    out = []
    for e in extents:
        if isinstance(e, int):
            out.append(e)
            continue
        analyzer = tvm.sym.Analyzer()
        free = []
        tvm_ffi.structural_walk(e, [(tirx.Var, free.append)])
        for var in free:
            analyzer.bind(var, tirx.const(values[str(var.name)], str(var.ty.dtype)))
        v = analyzer.simplify(e)
        assert isinstance(v, tirx.IntImm), f"extent {e} is not determined by {values}"
        out.append(int(v))
    return out


@functools.lru_cache(maxsize=None)
def pocl_queue():
    import pyopencl as cl

    for platform in cl.get_platforms():
        if "Portable Computing Language" in platform.name:
            ctx = cl.Context(platform.get_devices())
            return ctx, cl.CommandQueue(ctx)
    raise RuntimeError("PoCL is not installed (apt-get install pocl-opencl-icd)")


def run(program: str, name: str, arrays: dict[str, np.ndarray], scalars: dict[str, int], grid: list[int],
        block: list[int]) -> dict[str, np.ndarray]:
    """Run kernel ``name``: buffer parameters ``<x>_ptr`` from ``arrays[x]``, int parameters from
    ``scalars``; returns every buffer read back."""
    import pyopencl as cl

    ctx, queue = pocl_queue()
    prog = cl.Program(ctx, program).build()
    kernel = getattr(prog, name)
    bufs, args = {}, []
    for ctype, pname in kernel_params(program, name):
        if pname.endswith("_ptr"):
            a = np.ascontiguousarray(arrays[pname[:-4]])
            bufs[pname[:-4]] = (a, cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                                             hostbuf=a if a.size else np.zeros(1, a.dtype)))
            args.append(bufs[pname[:-4]][1])
        else:
            assert ctype == "int", (ctype, pname)
            args.append(np.int32(scalars[pname]))
    kernel(queue, [g * b for g, b in zip(grid, block)], list(block), *args)
    out = {}
    for key, (a, buf) in bufs.items():
        res = np.empty_like(a)
        if a.size:
            cl.enqueue_copy(queue, res, buf)
        out[key] = res
    queue.finish()
    return out
