"""GPU model libraries without a GPU: object formats, generated kernels checked with clang and PoCL,
the MLC interface on Metal (GPU sampler included), and the CUDA build."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import opencl_check as oc
from conftest import run_cli

pytestmark = pytest.mark.slow

PREFIX = "mcpm_test_lib_"
EM_AARCH64, ET_REL = 183, 1
CPU_ARM64, MH_OBJECT = 0x0100000C, 1
MLC_FUNCTIONS = ["_metadata", "embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify",
                 "create_tir_paged_kv_cache", "alloc_embedding_tensor", "softmax_with_temperature"]
LOGIT_KERNELS = ["apply_logit_bias_inplace", "apply_penalty_inplace", "apply_bitmask_inplace"]
SAMPLER = ["multinomial_from_uniform", "argsort_probs", "sample_with_top_p", "sampler_take_probs",
           "renormalize_by_top_p", "sampler_verify_draft_tokens"]
SAMPLER_KERNELS = ["sampler_multinomial", "sampler_top_p", "sampler_take_probs_gather", "sampler_renormalize_top_p",
                   "sampler_verify_tree", "argsort", "take_sorted_probs"]

_BUILDS: dict[tuple, tuple] = {}


@pytest.fixture(scope="session")
def gpu_build(quantized_dir, tmp_path_factory):
    """(target, quantization) -> (Lowered, .tar path), compiled once per session with prefix PREFIX."""
    from mcpm_mobile.compiler.compile import lower, write_library

    def get(target: str, quantization: str = "q4f16_1"):
        key = (target, quantization)
        if key not in _BUILDS:
            low = lower(quantized_dir("mha_tied", quantization), target, system_lib_prefix=PREFIX)
            tar = tmp_path_factory.mktemp("gpu") / f"{target}-{quantization}.tar"
            write_library(low, tar, True)
            _BUILDS[key] = low, tar
        return _BUILDS[key]

    return get


@pytest.fixture(scope="session")
def cli_build(quantized_dir, tmp_path_factory):
    """target -> .tar compiled through `mcpm-mobile compile` with the default system-lib prefix."""
    made = {}

    def get(target: str, suffix: str = ".tar"):
        if target not in made:
            out = tmp_path_factory.mktemp("cli") / f"{target}{suffix}"
            r = run_cli("compile", quantized_dir("mha_tied", "q4f16_1"), "--target", target, "-o", out, "--json")
            assert r.exit_code == 0, r.output
            made[target] = out, json.loads(r.output[r.output.index("{"):])
        return made[target]

    return get


def _objects(tar: Path) -> list[tuple[str, bytes]]:
    from mcpm_mobile.compiler.library import tar_members

    members = tar_members(tar)
    assert sorted(n.endswith("devc.o") for n, _ in members) == [False, True], [n for n, _ in members]
    return members


def _check_elf_aarch64(obj: bytes):
    assert obj[:4] == b"\x7fELF"
    assert obj[4] == 2 and obj[5] == 1  # ELFCLASS64, little endian
    e_type, e_machine = struct.unpack_from("<HH", obj, 16)
    assert (e_type, e_machine) == (ET_REL, EM_AARCH64)


def _check_macho_arm64(obj: bytes):
    magic, cputype, _, filetype = struct.unpack_from("<IIII", obj, 0)
    assert (magic, cputype, filetype) == (0xFEEDFACF, CPU_ARM64, MH_OBJECT)


def _has_registration(members, prefix: str) -> bool:
    from mcpm_mobile.support.ar import defined_symbols

    want = prefix + "__tvm_ffi__library_bin"
    return any(s in (want, "_" + want) for n, obj in members if n.endswith("devc.o") for s in defined_symbols(obj))


# --- (1) objects of the phone libraries ------------------------------------------------------------
@pytest.mark.parametrize("target", ["android", "ios"])
def test_phone_library_objects(gpu_build, target):
    _, tar = gpu_build(target)
    members = _objects(tar)
    for _, obj in members:
        (_check_macho_arm64 if target == "ios" else _check_elf_aarch64)(obj)
    assert _has_registration(members, PREFIX)


@pytest.mark.parametrize("target", ["harmonyos", "android-adreno"])
def test_cli_phone_library_default_prefix(cli_build, quantized_dir, target):
    from mcpm_mobile.formats import chat_config
    from mcpm_mobile.compiler.library import embedded_metadata, model_lib_name

    tar, summary = cli_build(target)
    prefix = model_lib_name(chat_config.read(quantized_dir("mha_tied", "q4f16_1")), target) + "_"
    assert summary["system_lib_prefix"] == prefix
    members = _objects(tar)
    for _, obj in members:
        _check_elf_aarch64(obj)
    assert _has_registration(members, prefix)
    assert embedded_metadata(tar)["quantization"] == "q4f16_1"


def test_force_replaces_a_phone_library(cli_build, quantized_dir, tmp_path):
    """TVM writes .tar libraries gzip-compressed: --force must recognise one as ours (and only with --force)."""
    import shutil

    tar = tmp_path / "lib.tar"
    shutil.copy(cli_build("harmonyos")[0], tar)
    args = ["compile", quantized_dir("mha_tied", "q4f16_1"), "--target", "harmonyos", "-o", tar, "--context-window", 64]
    r = run_cli(*args)
    assert r.exit_code == 2 and "--force" in r.output
    r = run_cli(*args, "--force")
    assert r.exit_code == 0, r.output


# --- (2) OpenCL sources compile: clang (fp16) and PoCL (fp32) ---------------------------------------
def test_opencl_fp16_sources_compile_with_clang(gpu_build, cli_build):
    from mcpm_mobile.compiler.library import device_sources

    assert oc.CLANG, "clang is needed (make sysdeps)"
    sources = {}
    for tar, prefix in ((gpu_build("android")[1], PREFIX), (cli_build("harmonyos")[0], None),
                        (cli_build("android-adreno")[0], None)):
        src = device_sources(tar)
        assert len(src) > 40 and any("half* restrict" in p for p in src.values())
        prefix = prefix or os.path.commonprefix(list(src))
        for k, p in src.items():  # the targets mostly generate the same programs: compile each once
            sources.setdefault(p.replace(prefix, "P_"), f"{tar.name}:{k}")
    sources = {name: program for program, name in sources.items()}
    with ThreadPoolExecutor(2) as pool:
        errors = dict(zip(sources, pool.map(oc.clang_errors, sources.values())))
    bad = {k: v for k, v in errors.items() if v}
    assert not bad, f"{len(bad)} programs fail, first: {next(iter(bad.items()))}"


def test_opencl_fp32_sources_build_on_pocl(gpu_build):
    import pyopencl as cl

    from mcpm_mobile.compiler.library import device_sources

    src = device_sources(gpu_build("android", "q4f32_1")[1])
    ctx, _ = oc.pocl_queue()
    bad = {}
    for name, program in src.items():
        try:
            cl.Program(ctx, program).build()
        except cl.Error as e:
            bad[name] = str(e)[:2000]
    assert not bad, f"{len(bad)} of {len(src)} programs fail on PoCL, first: {next(iter(bad.items()))}"


# --- (3) the dequantize GEMV / matmul kernels run on PoCL --------------------------------------------
def _dequantize_matmul_funcs(low) -> dict[str, object]:
    from tvm.tirx.buffer import is_buffer_var

    from tvm import tirx

    out = {}
    for gv, f in low.mod.functions_items():
        if f.attrs is not None and "mcpm.kernel" in f.attrs and f.attrs["mcpm.kernel"] == "dequantize_matmul":
            x = [p for p in f.params if is_buffer_var(p)][0]
            dims = tuple(str(int(d)) if isinstance(d, tirx.IntImm) else str(d.name) for d in x.shape[:-1])
            out.setdefault(dims, gv.name_hint)
    return out


@pytest.mark.parametrize("rows_dims,rows", [(("1", "1"), 1), (("1", "seq_len"), 37), (("1", "seq_len"), 2),
                                            (("batch_size", "1"), 1)])
def test_dequantize_kernels_match_numpy_on_pocl(gpu_build, rows_dims, rows):
    """Decode GEMV (1 row), prefill (37 and 2 rows) and batch decode: every kernel of the function
    (each branch of the low-batch dispatch) computes x @ dequantize(W)^T."""
    import tvm
    from tvm.tirx.buffer import is_buffer_var

    from mcpm_mobile.quantize.group import dequantize_rows
    from mcpm_mobile.compiler.library import device_sources

    low, tar = gpu_build("android", "q4f32_1")
    src = device_sources(tar)
    name = _dequantize_matmul_funcs(low)[rows_dims]
    func = low.mod[name]
    x_b, w_b, s_b, o_b = [p for p in func.params if is_buffer_var(p)]
    n, words = (int(d) for d in w_b.shape)
    k = words * 8
    rng = np.random.default_rng(rows)
    w = rng.integers(0, 2 ** 32, size=(n, words), dtype=np.uint32)
    s = (rng.random((n, k // 32)) * 0.1).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    want = x.astype(np.float64) @ dequantize_rows(w, s).astype(np.float64).T
    sizes = {str(d.name): rows for d in x_b.shape if not isinstance(d, tvm.tirx.IntImm)}
    x_shape = [rows if str(d) in sizes else int(d) for d in x_b.shape]
    kernels = oc.launches(func, low.target)
    assert kernels and all(k in src for k in kernels)
    if sizes:
        assert len(kernels) == 3  # LowBatchGEMV(2), LowBatchGEMV(4), matmul
    for kernel, (grid, block) in kernels.items():
        got = oc.run(src[kernel], kernel, {str(x_b.name): x.reshape(x_shape), str(w_b.name): w, str(s_b.name): s,
                                           str(o_b.name): np.zeros([*x_shape[:-1], n], np.float32)},
                     sizes, oc.evaluate(grid, sizes), oc.evaluate(block, sizes))[str(o_b.name)]
        err = np.abs(got.reshape(rows, n) - want).max() / np.abs(want).max()
        assert err < 1e-5, f"{kernel}: rel err {err:.2e}"


@pytest.mark.parametrize("layout", ["NK", "KN", "plain"])
def test_gpu_dequantize_gemv_for_every_layout(layout):
    """Every weight layout, with a row count that is not a multiple of 32 (the 2B vocabulary, 122753,
    is padded in the CPU kernel; the GPU rule rebuilds it unpadded so that it is a GEMV over many
    thread blocks, not one)."""
    import tvm
    from tvm import te

    from mcpm_mobile.compiler import gpu
    from mcpm_mobile.model.quantized_linear import _matmul_te
    from mcpm_mobile.quantize.group import dequantize_rows

    k, n = 64, 75
    rng = np.random.default_rng(0)
    if layout == "plain":
        arrays = [rng.standard_normal((n, k)).astype(np.float32)]
        full = arrays[0].astype(np.float64)
    else:
        qw = rng.integers(0, 2 ** 32, size=(n, k // 8), dtype=np.uint32)
        qs = (rng.random((n, k // 32)) * 0.1).astype(np.float32)
        full = dequantize_rows(qw, qs).astype(np.float64)
        arrays = [qw, qs] if layout == "NK" else [np.ascontiguousarray(qw.T), np.ascontiguousarray(qs.T)]
    x = te.placeholder((1, 1, k), "float32", "x")
    ws = [te.placeholder(a.shape, str(a.dtype), f"p{i}") for i, a in enumerate(arrays)]
    func = te.create_prim_func([x, *ws, _matmul_te(layout, n, k, "float32")(x, *ws)]).with_attrs(
        {"mcpm.kernel": "dequantize_matmul", "mcpm.layout": layout})
    target = tvm.target.Target({"kind": "opencl", "host": {"kind": "llvm"}})
    with target:
        sch = gpu.DequantizeMatmul().apply(func, target, False)
    (grid, _), = oc.launches(sch.mod["main"].with_attr("global_symbol", "g"), target).values()
    assert oc.evaluate(grid, {})[0] > 1
    xn = rng.standard_normal((1, 1, k)).astype(np.float32)
    inputs = {"x": xn, **{f"w{i}": a for i, a in enumerate(arrays)}, "matmul": np.zeros((1, 1, n), np.float32)}
    got = _opencl_kernel(sch.mod["main"], "g")(inputs, {})["matmul"]
    want = xn[0].astype(np.float64) @ full.T
    assert np.abs(got[0] - want).max() / np.abs(want).max() < 1e-5


# --- (4) iOS / Metal: the interface MLC's runtime needs ------------------------------------------------
def test_ios_library_exports_mlc_interface_with_gpu_sampler(gpu_build):
    from mcpm_mobile.compiler.library import device_sources, embedded_metadata, tar_members

    from tvm import relax

    low, tar = gpu_build("ios")
    relax_funcs = {gv.name_hint for gv, f in low.mod.functions_items() if isinstance(f, relax.Function)}
    for fn in MLC_FUNCTIONS + SAMPLER:
        assert fn in relax_funcs, fn
    blob = next(obj for n, obj in tar_members(tar) if n.endswith("devc.o"))
    for fn in MLC_FUNCTIONS + SAMPLER:  # the VM executable's function table, as length-prefixed names
        assert struct.pack("<Q", len(fn)) + fn.encode() in blob, fn
    kernels = device_sources(tar)
    for k in SAMPLER_KERNELS + LOGIT_KERNELS:
        name = f"{PREFIX}{k}_kernel"
        assert name in kernels, name
        assert f"kernel void {name}(" in kernels[name]
    assert all(src.startswith("#include <metal_stdlib>") for src in kernels.values())
    assert embedded_metadata(tar)["model_type"] == "minicpm"


def test_android_library_has_no_gpu_sampler(gpu_build):
    """MLC samples on the CPU for OpenCL; the library carries the logit processors as GPU kernels."""
    from mcpm_mobile.compiler.library import device_sources

    low, tar = gpu_build("android")
    names = {gv.name_hint for gv in low.mod.get_global_vars()}
    assert not names & set(SAMPLER)
    src = device_sources(tar)
    for k in LOGIT_KERNELS:
        assert f"{PREFIX}{k}_kernel" in src


def test_attention_merge_kernel_is_ours(gpu_build):
    """TVM 0.27's attention-merge kernel races on S (docs/opencl.md); ours, in every GPU library,
    has every thread read S before a barrier and one thread write it after."""
    from mcpm_mobile.compiler.library import device_sources

    src = device_sources(gpu_build("android")[1])
    merge = [v for k, v in src.items() if k.endswith("tir_attention_merge_state_kernel")]
    assert len(merge) == 1
    body = merge[0][merge[0].index("{"):]
    assert body.count("barrier(CLK_LOCAL_MEM_FENCE)") == 1
    assert body.index("barrier(") < body.index("S_ptr[", body.index("barrier("))  # the write comes after


# --- (5) every device function is bound to GPU threads -----------------------------------------------
@pytest.mark.parametrize("target", ["android", "ios"])
def test_every_device_function_has_thread_bindings(gpu_build, target):
    from tvm import tirx

    from mcpm_mobile.compiler import gpu

    low, _ = gpu_build(target)
    device = [gv.name_hint for gv, f in low.mod.functions_items()
              if isinstance(f, tirx.PrimFunc) and not gpu.is_host_function(f)]
    assert len(device) > 40
    assert gpu.unbound_functions(low.mod) == []
    host = [gv.name_hint for gv, f in low.mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and gpu.is_host_function(f)]
    assert host and all("shape_func" in h or "compute_symbolic_expr" in h for h in host)


def test_unbound_kernel_fails_the_compile():
    import tvm
    from tvm.script import tirx as T

    from mcpm_mobile.compiler import gpu
    from mcpm_mobile.errors import MCPMError

    @T.prim_func
    def serial(a: T.Buffer((4,), "float32")):
        for i in range(4):
            a[i] = a[i] + T.float32(1)

    mod = tvm.IRModule({"serial": serial.with_attr("target", tvm.target.Target({"kind": "opencl"}))})
    with pytest.raises(MCPMError, match="without thread bindings.*serial"):
        gpu.check_thread_bindings(mod)


# --- the GPU sampler kernels against numpy (run on PoCL) -----------------------------------------------
def _opencl_kernel(prim_func, name):
    import tvm

    target = tvm.target.Target({"kind": "opencl", "host": {"kind": "llvm"}})
    func = prim_func.with_attr("global_symbol", name)
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_cse_tir": True}):
        lib = tvm.compile(tvm.IRModule({name: func}), target)
    (kernel, (grid, block)), = oc.launches(func, target).items()
    program = oc.split_programs(lib.mod.imports[0].inspect_source("cl"))[kernel]
    return lambda arrays, sizes: oc.run(program, kernel, arrays, sizes, oc.evaluate(grid, sizes),
                                        oc.evaluate(block, sizes))


def _probs(rng, batch, vocab):
    logits = rng.standard_normal((batch, vocab)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p[1, vocab // 2:] = 0  # a row with a zero tail
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _first_above(cum, thr):
    above = np.nonzero(cum > thr)[0]
    return int(above[0]) if len(above) else len(cum) - 1


def test_sampler_kernels_match_numpy_on_pocl():
    from mcpm_mobile.compiler import sampler

    rng = np.random.default_rng(0)
    batch, vocab, n = 3, 1000, 6
    probs = _probs(rng, batch, vocab)
    u = rng.random(n).astype(np.float32)
    u[:2] = [0.0, 0.9999999]
    rows = np.array([0, 1, 2, 1, 0, 2], np.int32)
    sizes = {"n": n, "vocab": vocab, "batch": batch}

    got = _opencl_kernel(sampler._multinomial_kernel(256), "mn")(
        {"probs": probs, "uniform": u, "rows": rows, "out": np.zeros(n, np.int32)}, sizes)["out"]
    cums = np.cumsum(probs.astype(np.float64), 1)
    assert got.tolist() == [_first_above(cums[r], uu * cums[r, -1]) for r, uu in zip(rows, u)]
    assert all(probs[r, t] > 0 for r, t in zip(rows, got))

    order = np.argsort(-probs, axis=1, kind="stable").astype(np.int32)
    sorted_probs = np.take_along_axis(probs, order, 1)
    top_p = np.array([0.5, 0.9, 0.05], np.float32)
    got = _opencl_kernel(sampler._top_p_kernel(256), "tp")(
        {"probs": sorted_probs, "indices": order, "uniform": u, "rows": rows, "top_p_arr": top_p,
         "out": np.zeros(n, np.int32)}, sizes)["out"]
    cums = np.cumsum(sorted_probs.astype(np.float64), 1)
    want = [int(order[r, _first_above(cums[r], uu * cums[r, _first_above(cums[r], top_p[r])])])
            for r, uu in zip(rows, u)]
    assert got.tolist() == want

    got = _opencl_kernel(sampler._renormalize_kernel(256), "rn")(
        {"probs": probs, "top_p": top_p, "out": np.zeros_like(probs)}, sizes)["out"]
    for r in range(batch):
        pivot = sorted_probs[r, int(np.argmax(cums[r] >= top_p[r]))]
        keep = np.where(probs[r] >= pivot, probs[r], 0)
        np.testing.assert_allclose(got[r], keep / keep.sum(), rtol=1e-5, atol=1e-7)

    offsets = np.array([3, vocab + 1, 2 * vocab], np.int32)
    tokens = rng.integers(0, vocab, n).astype(np.int32)
    got = _opencl_kernel(sampler._take_probs_kernel(256), "tk")(
        {"probs": probs, "sorted_indices": order, "rows": rows, "tokens": tokens, "offsets": offsets,
         "sampled": np.zeros(n, np.float32), "top_probs": np.zeros(3, np.float32),
         "top_indices": np.zeros(3, np.int32)}, dict(sizes, m=3))
    np.testing.assert_array_equal(got["sampled"], probs[rows, tokens])
    want_idx = order[offsets // vocab, offsets % vocab]
    np.testing.assert_array_equal(got["top_indices"], want_idx)
    np.testing.assert_array_equal(got["top_probs"], probs[offsets // vocab, want_idx])


def test_draft_verification_kernel_matches_numpy_on_pocl():
    from mcpm_mobile.compiler import sampler

    rng = np.random.default_rng(1)
    vocab = 700
    # sequence 0: chain 0 -> 1 -> 2 -> 3; sequence 1: root 4 with children 5 and 6 (siblings), 6 -> 7
    first = np.array([1, 2, 3, -1, 5, -1, 7, -1], np.int32)
    sibling = np.array([-1, -1, -1, -1, -1, 6, -1, -1], np.int32)
    draft = _probs(rng, 8, vocab) ** 2
    draft /= draft.sum(1, keepdims=True)
    tokens = np.argmax(draft, 1).astype(np.int32)
    run = _opencl_kernel(sampler._verify_kernel(256), "vf")
    for trial in range(4):
        model = _probs(rng, 8, vocab)
        if trial == 0:  # each node's distribution for its children is the one its first child was drafted from
            model[first >= 0] = draft[first[first >= 0]]
        u = rng.random(8).astype(np.float32)
        want_model, want_parent = model.astype(np.float64), []
        for root in (0, 4):
            p, c = root, first[root]
            while c != -1:
                t = tokens[c]
                if want_model[p, t] >= u[c] * draft[c, t]:
                    p, c = c, first[c]
                    continue
                residual = np.maximum(want_model[p] - draft[c], 0)
                if residual.sum() < 1e-7:
                    p, c = c, first[c]
                else:
                    want_model[p] = residual / residual.sum()
                    c = sibling[c]
            want_parent.append(p)
        got = run({"draft_probs": draft, "draft_tokens": tokens, "model_probs": model.copy(), "first_child": first,
                   "next_sibling": sibling, "uniform": u, "parent_ptr": np.array([0, 4], np.int32)},
                  {"nbatch": 2, "vocab": vocab, "num_nodes": 8})
        assert got["parent_ptr"].tolist() == want_parent, trial
        np.testing.assert_allclose(got["model_probs"], want_model, rtol=1e-5, atol=1e-7)
        if trial == 0:  # every first child is accepted
            assert want_parent == [3, 5]


# --- CUDA ------------------------------------------------------------------------------------------------
def test_cuda_library(cli_build, tmp_path):
    from mcpm_mobile.compiler.library import device_sources

    tar, summary = cli_build("cuda")
    assert '"arch":"sm_90"' in summary["target"].replace(" ", "")
    source = device_sources(tar)["cuda"]
    for k in SAMPLER_KERNELS + ["dequantize_matmul"]:
        assert f"{k}" in source, k
    if shutil.which("nvcc"):
        (tmp_path / "k.cu").write_text(source)
        r = subprocess.run(["nvcc", "-arch=sm_90", "-ptx", str(tmp_path / "k.cu"), "-o", str(tmp_path / "k.ptx")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]


# --- input errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--target", "android", "-o", "x.so"], "must end in .tar"),
    (["--target", "ios", "-o", "x.tar", "--system-lib-prefix", "2b_q4f16_"], "must be a C identifier"),
    (["--target", "ios", "-o", "x.tar", "--system-lib-prefix", "short_"], "at least 8 characters"),
    (["--target", "host", "-o", "x.so", "--system-lib-prefix", "minicpm_lib_"], "static system libraries"),
    (["--target", "android", "-o", "x.tar", "--cuda-arch", "sm_80"], "--target cuda only"),
    (["--target", "cuda", "-o", "x.so", "--cuda-arch", "ampere"], "sm_90"),
    (["--target", "vulkan", "-o", "x.tar"], "unknown target 'vulkan'"),
    (["--target", '{"kind": "vulkan"}', "-o", "x.tar"], "no code generator for 'vulkan'"),
])
def test_compile_input_errors(quantized_dir, tmp_path, args, message):
    from click.testing import CliRunner

    from mcpm_mobile.cli import main

    args = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    r = CliRunner().invoke(main, ["compile", str(quantized_dir("mha_tied", "q4f16_1")), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("\n") == 1, r.output
