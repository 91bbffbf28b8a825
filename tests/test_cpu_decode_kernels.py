"""The host decode path's small kernels and VM lowering (issue 18): the split + RoPE kernel against TVM's own,
the float32 SiLU against numpy, the element-wise schedule, and a decode step's VM instruction count."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from host_fixtures import host_lib  # noqa: E402,F401 - fixture
from mcpm_mobile.compiler import cpu_math, cpu_rope, schedules  # noqa: E402
from tvm.s_tir import dlight as dl  # noqa: E402

HQ, HKV, D = 8, 2, 64


def _tvm_rope(theta, dtype):
    from tvm import s_tir
    from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map

    sch = s_tir.Schedule(llama_rope_with_position_map(theta, 1.0, D, HQ, HKV, dtype, {}, D))
    return sch.mod["main"]


def _build(func, name):
    return tvm.compile(tvm.IRModule({name: func.with_attr("global_symbol", name)}), "llvm")[name]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_rope_replaced_and_bit_identical(dtype):
    theta = 10000.0
    ref = _tvm_rope(theta, dtype)
    mod = cpu_rope.ReplaceCPURope(theta, HQ, HKV, D)(tvm.IRModule({"fused_rope": ref}))
    assert mod["fused_rope"].attrs.get("tirx.is_scheduled"), "TVM's kernel was not replaced"
    ours, theirs = _build(mod["fused_rope"], "ours"), _build(ref, "theirs")
    rng = np.random.default_rng(0)
    for n in (1, 5, cpu_rope.PARALLEL_MIN, 37):  # decode, short, the parallel threshold, a prefill chunk
        for apply_rope in (1, 0):
            qkv = rng.standard_normal((n, HQ + 2 * HKV, D)).astype(dtype)
            pos = rng.integers(0, 60000, n).astype(np.int32)
            outs = []
            for f in (ours, theirs):
                bufs = [tvm.runtime.tensor(np.zeros((n, h, D), dtype)) for h in (HQ, HKV, HKV)]
                f(tvm.runtime.tensor(qkv), tvm.runtime.tensor(pos), *bufs, apply_rope)
                outs.append([b.numpy() for b in bufs])
            for a, b in zip(*outs):
                np.testing.assert_array_equal(a, b)


def test_rope_left_alone_when_it_differs():
    ref = _tvm_rope(10000.0, "float16")
    mod = cpu_rope.ReplaceCPURope(500000.0, HQ, HKV, D)(tvm.IRModule({"fused_rope": ref}))  # another theta
    assert not (mod["fused_rope"].attrs and mod["fused_rope"].attrs.get("tirx.is_scheduled"))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_silu_vectorised_against_numpy(dtype):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([3, 4096], dtype))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.nn.silu(x)))
    target = tvm.target.Target("llvm")
    with target:
        mod = relax.transform.LegalizeOps(cpu_math.LEGALIZE)(bb.get())
        mod = dl.ApplyDefaultSchedule(*schedules.schedule_rules(target))(mod)
    prim = next(f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    script = prim.script()
    assert "T.sigmoid" not in script and "T.exp(" not in script, "SiLU still calls libm's exp"
    assert "T.vectorized" in script
    ex = tvm.compile(mod, target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xs = np.concatenate([np.linspace(-90, 90, 4096), np.linspace(-4, 4, 4096),
                         np.random.default_rng(1).standard_normal(4096) * 8]).reshape(3, 4096).astype(dtype)
    got = vm["main"](tvm.runtime.tensor(xs)).numpy().astype(np.float64)
    xf = xs.astype(np.float64)
    want = xf / (1 + np.exp(-xf))
    tol = 2e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.slow
def test_decode_step_is_lean(host_lib):  # noqa: F811 - fixture
    """Repeated views of planned storage are bound once and decode has no kill instructions."""
    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib("gqa_untied", "q4f16_1")
    engine = Engine(weights, lib)
    engine.prefill([1, 5, 9])
    calls: dict[str, int] = {}

    def count(func, name, before, ret, *args):
        if before:
            calls[name] = calls.get(name, 0) + 1
        return 0

    engine.vm.set_instrument(count)
    try:
        engine.decode(7)
    finally:
        engine.vm.set_instrument(None)
    assert calls.get("vm.builtin.null_value", 0) <= 8  # ~22 a layer before
    assert calls.get("vm.builtin.alloc_tensor", 0) <= 16  # ~12 a layer before
