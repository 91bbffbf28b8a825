"""The compiled host library against the independent numpy reference, and its MLC interface."""
from __future__ import annotations

import json

import numpy as np
import pytest

from host_fixtures import host_lib, rel_err  # noqa: F401 - fixture
from mlc_weights import dequantized_hf_weights
from reference_numpy import ReferenceMiniCPM, read_hf_checkpoint

pytestmark = pytest.mark.slow

PREFILL, DECODE = 9, 8
TOL = {"q4f32_1": 1e-4, "q0f32": 1e-4, "q4f16_1": 2e-2, "q4f16_0": 2e-2, "q0f16": 2e-2}

CASES = [
    ("mha_tied", "q4f32_1"), ("mha_tied", "q4f16_1"), ("mha_tied", "q0f16"), ("mha_tied", "q4f16_0"),
    ("mha_tied", "q0f32"),
    ("gqa_untied", "q4f32_1"), ("gqa_untied", "q4f16_1"), ("gqa_untied", "q0f16"),
    ("gqa_tied_f32", "q4f32_1"),
]


def _reference(weights, tiny_dir, name, quantization):
    if quantization.startswith("q0"):
        return ReferenceMiniCPM(*read_hf_checkpoint(tiny_dir(name)))  # the original weights
    return ReferenceMiniCPM(*dequantized_hf_weights(weights))


def _steps(engine, ids, decode_ids):
    engine.reset()
    out = [engine.prefill(ids)]
    for t in decode_ids:
        out.append(engine.decode(int(t)))
    return out


@pytest.mark.parametrize("name,quantization", CASES)
def test_logits_match_reference(host_lib, tiny_dir, name, quantization):
    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib(name, quantization)
    ref = _reference(weights, tiny_dir, name, quantization)
    vocab = ref.w["model.embed_tokens.weight"].shape[0]
    rng = np.random.default_rng(7)
    ids = [int(x) for x in rng.integers(3, vocab, PREFILL)]
    dec = [int(x) for x in rng.integers(3, vocab, DECODE)]
    got = _steps(Engine(weights, lib), ids, dec)
    want = ref.logits(ids + dec)[PREFILL - 1:]
    assert len(got) == len(want) == DECODE + 1
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.shape == (vocab,)
        assert rel_err(g, w) <= TOL[quantization], f"step {step}: rel err {rel_err(g, w):.2e}"
        assert int(np.argmax(g)) == int(np.argmax(w)), f"step {step}: argmax differs"


@pytest.mark.parametrize("name,quantization", [("mha_tied", "q4f32_1"), ("gqa_untied", "q4f32_1"),
                                               ("mha_tied", "q4f16_1")])
def test_greedy_generation_equals_reference(host_lib, tiny_dir, name, quantization):
    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib(name, quantization)
    ref = _reference(weights, tiny_dir, name, quantization)
    engine = Engine(weights, lib)
    prompt = engine.chat_prompt_ids("the model runs on a phone")
    r = engine.generate(prompt_ids=prompt, max_tokens=16, temperature=0, repetition_penalty=1.0, stop_token_ids=[],
                        stop_strings=[])
    assert r.token_ids == ref.greedy(prompt, 16)
    assert len(r.token_ids) == 16 and r.finish_reason == "length"


def test_prefill_longer_than_chunk(host_lib, tiny_dir):
    """A 30-token prompt through an 8-token prefill chunk: 4 chunks, same logits as the reference."""
    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib("gqa_untied", "q4f32_1", prefill_chunk=8, context_window=64)
    ref = _reference(weights, tiny_dir, "gqa_untied", "q4f32_1")
    engine = Engine(weights, lib)
    assert engine.prefill_chunk == 8
    ids = [int(x) for x in np.random.default_rng(3).integers(3, 500, 30)]
    got = _steps(engine, ids, [5, 6])
    want = ref.logits(ids + [5, 6])[29:]
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-4
        assert np.argmax(g) == np.argmax(w)


def test_context_window_is_reached_cleanly(host_lib, tiny_dir):
    from mcpm_mobile.errors import MCPMError
    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib("mha_tied", "q4f32_1", context_window=24, prefill_chunk=16)
    ref = _reference(weights, tiny_dir, "mha_tied", "q4f32_1")
    engine = Engine(weights, lib)
    prompt = [int(x) for x in np.random.default_rng(5).integers(3, 500, 20)]
    r = engine.generate(prompt_ids=prompt, max_tokens=50, temperature=0, repetition_penalty=1.0, stop_token_ids=[],
                        stop_strings=[])
    # 20 prompt tokens + 4 decoded fill the 24-token window; the 5th token is sampled from the last logits
    assert r.finish_reason == "context"
    assert len(r.token_ids) == 5
    assert r.token_ids == ref.greedy(prompt, 5)
    assert len(engine.history) == 24
    with pytest.raises(MCPMError, match="context window"):
        engine.decode(1)
    with pytest.raises(MCPMError, match="context window is 24"):
        engine.generate(prompt_ids=list(range(3, 28)), max_tokens=1)


def test_metadata_and_interface(host_lib):
    import tvm
    from tvm import relax

    weights, lib = host_lib("gqa_untied", "q4f16_1")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    meta = json.loads(str(vm["_metadata"]()))
    for key in ("model_type", "quantization", "context_window_size", "prefill_chunk_size", "max_batch_size",
                "tensor_parallel_shards", "params", "memory_usage", "kv_cache"):
        assert key in meta
    assert meta["model_type"] == "minicpm" and meta["quantization"] == "q4f16_1"
    assert meta["kv_cache"] == {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "head_dim": 16}
    index = json.loads((weights / "tensor-cache.json").read_text())
    stored = {r["name"]: r for s in index["records"] for r in s["records"]}
    assert sorted(p["name"] for p in meta["params"]) == sorted(stored)
    for p in meta["params"]:
        assert p["shape"] == stored[p["name"]]["shape"] and p["dtype"] == stored[p["name"]]["dtype"]
    assert meta["params"][-2]["name"].startswith("lm_head.")  # untied: the head is a parameter
    for fn in ("embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify",
               "create_tir_paged_kv_cache", "alloc_embedding_tensor", "softmax_with_temperature"):
        assert fn in meta["memory_usage"], fn
        vm[fn]  # noqa: B018 - raises if missing
    assert meta["memory_usage"]["prefill"] > meta["memory_usage"]["decode"] > 0
    mod = vm.module
    for fn in ("apply_logit_bias_inplace", "apply_penalty_inplace", "apply_bitmask_inplace"):
        assert mod.get_function(fn, query_imports=True) is not None
    emb = vm["alloc_embedding_tensor"]()
    assert tuple(emb.shape) == (meta["prefill_chunk_size"], 64) and str(emb.dtype) == "float16"


def test_compile_overrides_recorded(quantized_dir, tmp_path):
    import tvm
    from tvm import relax

    from conftest import run_cli

    lib = tmp_path / "lib.so"
    r = run_cli("compile", quantized_dir("mha_tied", "q4f16_1"), "-o", lib, "--context-window", "96",
                "--prefill-chunk", "24", "--max-batch-size", "3", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["output"] == str(lib)
    meta = json.loads(str(relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())["_metadata"]()))
    assert (meta["context_window_size"], meta["prefill_chunk_size"], meta["max_batch_size"]) == (96, 24, 3)
    # the library is there now: compiling onto it needs --force, which replaces it (it is a library)
    r = run_cli("compile", quantized_dir("mha_tied", "q4f16_1"), "-o", lib, "--context-window", "64")
    assert r.exit_code == 2 and "--force" in r.output
    r = run_cli("compile", quantized_dir("mha_tied", "q4f16_1"), "-o", lib, "--context-window", "64", "--force")
    assert r.exit_code == 0, r.output
    fresh = tmp_path / "replaced.so"  # dlopen of the same path would return the library already loaded
    fresh.write_bytes(lib.read_bytes())
    meta = json.loads(str(relax.VirtualMachine(tvm.runtime.load_module(str(fresh)), tvm.cpu())["_metadata"]()))
    assert meta["context_window_size"] == 64


def test_batch_functions_agree_with_single_sequence(host_lib):
    """batch_prefill / batch_decode / batch_verify (what MLC's runtime calls) give prefill/decode's logits."""
    import tvm
    import tvm_ffi

    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib("mha_tied", "q4f32_1")
    e = Engine(weights, lib)
    ids = [5, 9, 33, 100, 7, 8]
    e.reset()
    p = e.prefill(ids)
    d = e.decode(42)
    S, vm, dev = tvm_ffi.Shape, e.vm, e.dev
    g = tvm.get_global_func
    kv = vm["create_tir_paged_kv_cache"](S([1]), S([64]), S([32]), S([16]), S([0]))
    g("vm.builtin.kv_state_add_sequence")(kv, 0)
    begin, end = g("vm.builtin.kv_state_begin_forward"), g("vm.builtin.kv_state_end_forward")
    begin(kv, S([0]), S([len(ids)]), None)
    pos = tvm.runtime.tensor(np.array([len(ids) - 1], np.int32), dev)
    lo, kv = vm["batch_prefill"](e._embed(ids), pos, kv, e.params)
    end(kv)
    np.testing.assert_allclose(lo.numpy().reshape(-1), p, rtol=1e-5, atol=1e-5)
    begin(kv, S([0]), S([1]), None)
    lo, kv = vm["batch_decode"](e._embed([42]), kv, e.params)
    end(kv)
    np.testing.assert_allclose(lo.numpy().reshape(-1), d, rtol=1e-5, atol=1e-5)
    kv2 = vm["create_tir_paged_kv_cache"](S([1]), S([64]), S([32]), S([16]), S([0]))
    g("vm.builtin.kv_state_add_sequence")(kv2, 0)
    begin(kv2, S([0]), S([len(ids)]), None)
    lo, kv2 = vm["batch_verify"](e._embed(ids), kv2, e.params)
    end(kv2)
    assert lo.shape == (1, len(ids), 512)
    np.testing.assert_allclose(lo.numpy()[0, -1], p, rtol=1e-5, atol=1e-5)


def test_softmax_and_logit_processors(host_lib):
    import tvm

    from mcpm_mobile.runtime.engine import Engine

    weights, lib = host_lib("mha_tied", "q4f32_1")
    e = Engine(weights, lib)
    dev, mod = e.dev, e.vm.module
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 1, 300)).astype(np.float32) * 5
    temp = np.array([0.7, 0.0], np.float32)
    probs = e.vm["softmax_with_temperature"](tvm.runtime.tensor(logits, dev), tvm.runtime.tensor(temp, dev)).numpy()
    want = np.exp((logits[0, 0] - logits[0, 0].max()) / 0.7)
    np.testing.assert_allclose(probs[0, 0], want / want.sum(), rtol=1e-5, atol=1e-7)
    assert probs[1, 0].argmax() == logits[1, 0].argmax() and probs[1, 0].max() > 0.999  # t=0: one-hot

    base = rng.standard_normal((2, 40)).astype(np.float32)

    def run(fn, *arrays):
        t = [tvm.runtime.tensor(a, dev) for a in arrays]
        mod.get_function(fn, query_imports=True)(*t)
        return t[0].numpy()

    pos2seq, tokens = np.array([0, 1, 1], np.int32), np.array([3, 5, 7], np.int32)
    got = run("apply_logit_bias_inplace", base.copy(), pos2seq, tokens, np.array([1.0, -2.0, 0.5], np.float32))
    want = base.copy()
    want[0, 3] += 1.0
    want[1, 5] -= 2.0
    want[1, 7] += 0.5
    np.testing.assert_allclose(got, want, rtol=1e-6)

    seq_ids, cnt = np.array([0, 1], np.int32), np.array([2, 1, 3], np.int32)
    pen = np.array([[0.5, 0.25, 1.3], [0.0, 0.0, 2.0]], np.float32)
    got = run("apply_penalty_inplace", base.copy(), seq_ids, pos2seq, tokens, cnt, pen)
    want = base.copy()
    for i, (p, t) in enumerate(zip(pos2seq, tokens)):
        v = want[seq_ids[p], t] - (pen[p, 0] + cnt[i] * pen[p, 1])
        want[seq_ids[p], t] = v * pen[p, 2] if v < 0 else v / pen[p, 2]
    np.testing.assert_allclose(got, want, rtol=1e-6)

    bits = rng.integers(0, 2, (2, 40))
    words = np.zeros((2, 2), np.uint32)
    for v in range(40):
        words[:, v // 32] |= (bits[:, v].astype(np.uint32) << np.uint32(v % 32))
    got = run("apply_bitmask_inplace", base.copy(), seq_ids, words.view(np.int32))
    want = np.where(bits == 1, base, np.finfo(np.float32).min)
    np.testing.assert_array_equal(got, want)


def test_tied_head_and_linears_are_fused_kernels():
    """No transpose of the embedding, no full-precision weight: every linear is one dequantize_matmul."""
    import tvm
    from tvm import relax

    from mcpm_mobile.compiler.compile import resolve_target
    from mcpm_mobile.model.config import MiniCPMConfig
    from mcpm_mobile.model.minicpm import build_model, export
    from mcpm_mobile.model.quantization import QUANTIZATIONS

    cfg = MiniCPMConfig.from_dict({"model_type": "minicpm", "vocab_size": 256, "hidden_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128})
    for q in ("q4f16_1", "q4f16_0", "q0f16"):
        mod, _ = export(build_model(cfg, QUANTIZATIONS[q], resolve_target("host"), tied=True))
        mod = tvm.transform.Sequential([relax.transform.FuseTransposeMatmul(), relax.transform.LegalizeOps(),
                                        relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
        names = [gv.name_hint for gv in mod.get_global_vars()]
        assert not [n for n in names if ("transpose" in n or "permute" in n) and "kv_cache" not in n], names
        decode = mod["decode"].script()
        assert "lm_head" in decode and "embed_tokens" in decode
        kernels = [f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
                   and f.attrs and f.attrs.get("mcpm.kernel") == "dequantize_matmul"]
        assert kernels
        for f in kernels:  # weights enter as stored (uint32 codes or the plain matrix), never dequantized outside
            dtypes = {str(p.dtype) for p in f.params}
            assert ("uint32" in dtypes) == q.startswith("q4")


@pytest.mark.parametrize("layout", ["NK", "KN", "plain"])
@pytest.mark.parametrize("rows,n", [(1, 75), (1, 96), (5, 75), (5, 96)])
def test_dequantize_matmul_kernel(layout, rows, n):
    """The scheduled CPU kernel alone (GEMV and tiled matmul, odd and tile-multiple N) against numpy."""
    import tvm
    from tvm import te

    from mcpm_mobile.compiler.compile import resolve_target
    from mcpm_mobile.compiler.schedules import CPUDequantizeMatmul
    from mcpm_mobile.model.quantized_linear import _matmul_te
    from mcpm_mobile.quantize.group import dequantize_rows

    k, dt = 64, "float16"
    target = resolve_target("host")
    x = te.placeholder((1, rows, k), dt, "x")
    rng = np.random.default_rng(rows * n)
    if layout == "plain":
        wn = rng.standard_normal((n, k)).astype(dt)
        args, full = [te.placeholder((n, k), dt, "w")], wn.astype(np.float64)
        arrays = [wn]
    else:
        qw = rng.integers(0, 2 ** 32, size=(n, k // 8), dtype=np.uint32)
        qs = (rng.random((n, k // 32)) * 0.1).astype(dt)
        full = dequantize_rows(qw, qs.astype(np.float32)).astype(np.float64)
        arrays = [qw, qs] if layout == "NK" else [np.ascontiguousarray(qw.T), np.ascontiguousarray(qs.T)]
        args = [te.placeholder(a.shape, str(a.dtype), f"p{i}") for i, a in enumerate(arrays)]
    out = _matmul_te(layout, n, k, dt)(x, *args)
    func = te.create_prim_func([x, *args, out]).with_attrs(
        {"mcpm.kernel": "dequantize_matmul", "mcpm.layout": layout, "global_symbol": "main"})
    sch = CPUDequantizeMatmul().apply(func, target, False)
    assert sch is not None
    lib = tvm.compile(sch.mod, target)
    dev = tvm.cpu()
    xn = rng.standard_normal((1, rows, k)).astype(dt)
    o = tvm.runtime.tensor(np.zeros((1, rows, n), dt), dev)
    lib["main"](tvm.runtime.tensor(xn, dev), *[tvm.runtime.tensor(a, dev) for a in arrays], o)
    want = xn[0].astype(np.float64) @ full.T
    if "vpdpbusd" in sch.mod.script():  # int8 activations (AVX-512 VNNI decode GEMV)
        assert rel_err(o.numpy()[0], int8_activations(xn[0]) @ full.T) < 2e-3
        assert rel_err(o.numpy()[0], want) < 1e-2
    else:
        assert rel_err(o.numpy()[0], want) < 2e-3


def int8_activations(x: np.ndarray) -> np.ndarray:
    """x rounded as the VNNI GEMV quantizes it: int8 per 32-group, scale max|x| / 127 (float64)."""
    g = x.astype(np.float64).reshape(*x.shape[:-1], -1, 32)
    d = np.abs(g).max(axis=-1, keepdims=True) / 127
    q = np.round(np.divide(g, d, out=np.zeros_like(g), where=d > 0))
    return (q * d).reshape(x.shape)


@pytest.mark.parametrize("n,k", [(75, 256), (96, 2304), (40, 5760)])
def test_vnni_gemv_kernel(n, k):
    """The AVX-512 VNNI decode GEMV (16-word vectors, padded rows) against numpy: exact up to float
    rounding given its int8 activations, and within 1e-2 of the float product."""
    import tvm
    from tvm.target import codegen

    from mcpm_mobile.compiler.compile import resolve_target
    from mcpm_mobile.compiler import vnni
    from mcpm_mobile.quantize.group import dequantize_rows

    target = resolve_target("host")
    if not codegen.target_has_features(["avx512vnni", "avx512vl", "avx512bw"], target):
        pytest.skip("this CPU has no AVX-512 VNNI")
    rng = np.random.default_rng(n + k)
    xn = rng.standard_normal((1, 1, k)).astype(np.float16)
    xn[0, 0, :32] = 0  # an all-zero group (scale 0)
    qw = rng.integers(0, 2 ** 32, size=(n, k // 8), dtype=np.uint32)
    qs = (rng.random((n, k // 32)) * 0.1).astype(np.float16)
    lib = tvm.compile(tvm.IRModule({"main": vnni.gemv(n, k, (1, 1), "float16", "float16", "float32")
                                    .with_attr("global_symbol", "main")}), target)
    dev = tvm.cpu()
    o = tvm.runtime.tensor(np.zeros((1, 1, n), np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (xn, qw, qs)], o)
    full = dequantize_rows(qw, qs.astype(np.float32)).astype(np.float64)
    got = o.numpy()[0, 0]
    assert rel_err(got, int8_activations(xn[0, 0]) @ full.T) < 1e-5
    assert rel_err(got, xn[0, 0].astype(np.float64) @ full.T) < 1e-2


@pytest.mark.parametrize("rows", [1, 6, 13])
def test_vnni_matmul_kernel(rows):
    """The AVX-512 VNNI prefill matmul with a symbolic row count (full 6-row blocks and a tail)."""
    import tvm
    from tvm.target import codegen

    from mcpm_mobile.compiler import vnni
    from mcpm_mobile.compiler.compile import resolve_target
    from mcpm_mobile.quantize.group import dequantize_rows

    target = resolve_target("host")
    if not codegen.target_has_features(["avx512vnni", "avx512vl", "avx512bw"], target):
        pytest.skip("this CPU has no AVX-512 VNNI")
    n, k = 96, 320
    m = tvm.tirx.Var("m", "int64")
    lib = tvm.compile(tvm.IRModule({"main": vnni.matmul(n, k, (1, m), "float16", "float16", "float16")
                                    .with_attr("global_symbol", "main")}), target)
    rng = np.random.default_rng(rows)
    xn = rng.standard_normal((1, rows, k)).astype(np.float16)
    xn[0, 0, 32:64] = 0
    qw = rng.integers(0, 2 ** 32, size=(n, k // 8), dtype=np.uint32)
    qs = (rng.random((n, k // 32)) * 0.1).astype(np.float16)
    dev = tvm.cpu()
    o = tvm.runtime.tensor(np.zeros((1, rows, n), np.float16), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (xn, qw, qs)], o)
    full = dequantize_rows(qw, qs.astype(np.float32)).astype(np.float64)
    got = o.numpy()[0].astype(np.float64)
    assert rel_err(got, int8_activations(xn[0]) @ full.T) < 2e-3  # float16 output
    assert rel_err(got, xn[0].astype(np.float64) @ full.T) < 1e-2
