"""The compiled GGUF block kernels (kernels/gguf_blocks.py) write the numpy quantizers' bytes exactly.

- blocks: Q4_0/Q8_0 against gguf-py's ``gguf.quants.quantize``, Q4_K/Q5_K/Q6_K against ``gguf_kquants``, for
  every stored dtype, several row lengths and the cases the arithmetic branches on (ties, zero blocks, tiny and
  huge magnitudes); rows the kernel cannot match make it return None, never other bytes;
- no fused multiply-add in the generated code (numpy rounds each product; one FMA moved 5 of 294k Q6_K
  blocks of the 0.5B bench checkpoint);
- files: export-gguf writes the same bytes with and without the kernels (safetensors bf16/f16/f32, .bin), and a
  NaN still gets the one-line error;
- the kernel cache (support/cache.py, tested in test_kernel_cache.py): a second process loads the Q6_K
  kernel without importing TVM.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest

from conftest import run_cli
from mcpm_mobile.formats import gguf_export, gguf_kquants
from mcpm_mobile.kernels import gguf_blocks, tir
from mcpm_mobile.model.tiny import write_tiny_checkpoint
from mcpm_mobile.support import safetensors_io

Q = gguf.GGMLQuantizationType
STORED = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
DATA = Path(__file__).parent / "data" / "pytorch"


def reference(x: np.ndarray, qtype: Q) -> np.ndarray:
    x = x.astype(np.float32)
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        return gguf_kquants.quantize_rows(x, qtype.name.lower())
    return gguf.quants.quantize(x, qtype)


def hard_rows(k: int, stored: str, seed: int = 0) -> np.ndarray:
    """Rows in the stored dtype with the cases the block math branches on."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, k)) * 0.02
    x[1] *= rng.standard_t(3, k)  # heavy tails
    x[2] = 0.0  # zero blocks (Q4_0: d = -0.0)
    x[3] = -0.0
    x[3, 1::7] = 0.0
    x[4] = rng.choice([-1.0, 1.0], k) * 0.5  # every block: +max and -max tie, the first one counts
    half = rng.integers(-16, 17, k) / 2  # x * id lands on .5 for Q4_0 (trunc(. + 8.5)), Q8_0 rounds half away
    half[::32] = 8.0
    x[5] = half * 0.015625
    x[6] = rng.integers(-254, 255, k) / 2 * (1 / 127)
    x[6, ::32] = 1.0
    x[7] *= 1e3  # large
    x[8] *= 1e-30  # tiny: Q6_K's all-zero super-blocks (below GROUP_MAX_EPS)
    x[9] = rng.standard_normal(k) * 3e-14  # Q6_K sub-blocks above the epsilon, scales below it
    x[10, : k // 2] = 0.0  # zero blocks / sub-blocks next to non-zero ones
    x[11, 3] = 5.0  # an outlier
    x[12] = np.abs(x[12])
    x[13] *= 1e-4  # Q6_K: d in float16's subnormal range
    x[14] = np.repeat(rng.standard_normal(k // 16) * 0.01, 16)  # constant sub-blocks
    x[15] = rng.standard_normal(k).astype(np.float16) * 0.01
    if stored == "F16":
        x = np.clip(x, -60000, 60000)
    return x.astype(STORED[stored])


@pytest.mark.parametrize("stored", STORED)
@pytest.mark.parametrize("kind,k", [("Q4_0", 32), ("Q4_0", 96), ("Q4_0", 1024), ("Q8_0", 32), ("Q8_0", 1056),
                                    ("Q6_K", 256), ("Q6_K", 1280), ("Q4_K", 256), ("Q4_K", 1280), ("Q5_K", 768)])
def test_hard_rows_equal_numpy(kind, k, stored):
    qtype = Q[kind]
    x = hard_rows(k, stored)
    out = gguf_blocks.quantize(x, stored, qtype)
    assert out is not None, "the kernel refused rows it should take"
    np.testing.assert_array_equal(out, reference(x, qtype))


@pytest.mark.parametrize("kind,stored", [("Q4_0", "BF16"), ("Q8_0", "F16"), ("Q6_K", "BF16"), ("Q6_K", "F32"),
                                         ("Q4_K", "BF16"), ("Q5_K", "F32")])
def test_many_random_blocks_equal_numpy(kind, stored):
    """Near-ties are rare (an FMA moved 1 Q6_K block in 1,600): enough blocks that a changed rounding shows."""
    qtype = Q[kind]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4096 if qtype == Q.Q6_K else 1024, 1024)) * 0.05).astype(STORED[stored])
    out = gguf_blocks.quantize(x, stored, qtype)
    np.testing.assert_array_equal(out, reference(x, qtype))


def test_raw_bits_strided_and_read_only_rows():
    """bfloat16 as uint16 bits, a strided view (a .bin tensor) and read-only rows give the same bytes."""
    x = hard_rows(512, "BF16")
    ref = reference(x, Q.Q4_0)
    np.testing.assert_array_equal(gguf_blocks.quantize(x.view(np.uint16), "BF16", Q.Q4_0), ref)
    wide = np.zeros((16, 1024), ml_dtypes.bfloat16)
    wide[:, ::2] = x
    np.testing.assert_array_equal(gguf_blocks.quantize(wide[:, ::2], "BF16", Q.Q4_0), ref)
    x.flags.writeable = False  # a read-only map is copied before DLPack takes it
    np.testing.assert_array_equal(gguf_blocks.quantize(x, "BF16", Q.Q4_0), ref)


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0", "Q6_K", "Q4_K", "Q5_K"])
def test_rows_the_kernel_cannot_match_fall_back(kind):
    qtype = Q[kind]
    x = hard_rows(256, "F32")
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[9, 17] = bad
        assert gguf_blocks.quantize(y, "F32", qtype) is None
    y = x.copy()
    if gguf_blocks.BLOCK[qtype] == 256:
        y[3, :16] = 3e7  # squared errors / cubes may overflow float32
    else:
        y[3, :32] = 1e-39  # subnormal block: 1/d overflows
    assert gguf_blocks.quantize(y, "F32", qtype) is None
    # shapes and types without a kernel
    assert gguf_blocks.quantize(x[:, :48], "F32", Q.Q6_K) is None
    assert gguf_blocks.quantize(x, "F64", qtype) is None
    assert gguf_blocks.quantize(x, "F32", Q.Q2_K) is None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 FMA mnemonics")
@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0", "Q6_K", "Q4_K", "Q5_K"])
def test_no_fused_multiply_add(kind):
    """TVM's LLVM backend contracts ``a * b + c`` into an FMA; the kernels block it (``tir.no_fma``)."""
    qtype = Q[kind]
    module = tir.build_host(gguf_blocks.BUILDERS[qtype](qtype, "uint16"))
    asm = "\n".join(m.inspect_source("asm") for m in [module.mod, *module.mod.imports] if m.kind == "llvm")
    assert "vmulps" in asm
    assert not re.findall(r"\bv?fn?m(add|sub)\d*[ps]s\b", asm)


def test_warm_cache_loads_without_tvm(tmp_path):
    x = hard_rows(256, "BF16")
    np.save(tmp_path / "x.npy", x.view(np.uint16))
    code = ("import sys, numpy as np, gguf; from mcpm_mobile.kernels import gguf_blocks as g; "
            f"x = np.load({str(tmp_path / 'x.npy')!r}); out = g.quantize(x, 'BF16', gguf.GGMLQuantizationType.Q6_K); "
            f"np.save({str(tmp_path / 'out.npy')!r}, out); print('tvm' in sys.modules)")
    env = {**os.environ, "MCPM_CACHE_DIR": str(tmp_path / "cache")}

    def run() -> str:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference(x, Q.Q6_K))
        return out

    assert [run(), run()] == ["True", "False"]  # built, then loaded from the cache
    assert [p.name.startswith("gguf-q6_k-uint16-") for p in (tmp_path / "cache" / "kernels").iterdir()] == [True]


def _export_both_ways(src: Path, tmp_path: Path, weight_type: str, monkeypatch) -> tuple[bytes, bytes]:
    used = []
    real = gguf_blocks.quantize

    def counting(*args):
        out = real(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(gguf_blocks, "quantize", counting)
    gguf_export.export_gguf(src, tmp_path / "kernel.gguf", weight_type)
    assert used and all(used), "the kernels did not run"
    monkeypatch.setattr(gguf_blocks, "quantize", lambda *args: None)
    gguf_export.export_gguf(src, tmp_path / "numpy.gguf", weight_type)
    return (tmp_path / "kernel.gguf").read_bytes(), (tmp_path / "numpy.gguf").read_bytes()


@pytest.mark.parametrize("variant,weight_type", [("mha_tied", "q4_0"), ("gqa_untied", "q8_0"),
                                                 ("gqa_tied_f32", "q4_0"), ("mha_untied_sharded", "q8_0")])
def test_export_same_bytes_with_and_without_kernels(variant, weight_type, tiny_dir, tmp_path, monkeypatch):
    a, b = _export_both_ways(tiny_dir(variant), tmp_path, weight_type, monkeypatch)
    assert a == b


@pytest.fixture(scope="module")
def ckpt_256(tmp_path_factory):
    """Rows of 256: the tied embedding of a q4_0 file gets Q6_K, as the 0.5B's does."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("k256") / "c", layers=1, hidden=256, heads=4, kv_heads=2,
                                 intermediate=512, vocab=512, tied=True, dtype="bfloat16", seed=11)


@pytest.mark.parametrize("weight_type", ["q4_0", "q6_k", "q4_k_m", "q5_k_m"])
def test_export_with_k_quants_same_bytes(weight_type, ckpt_256, tmp_path, monkeypatch):
    a, b = _export_both_ways(ckpt_256, tmp_path, weight_type, monkeypatch)
    assert a == b
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "kernel.gguf").tensors}
    assert types["token_embd.weight"] == Q.Q6_K
    if weight_type.endswith("_k_m"):
        assert types["blk.0.attn_q.weight"] == Q[weight_type[:2].upper() + "_K"]


def test_export_from_bin_same_bytes(tiny_dir, tmp_path, monkeypatch):
    src = tmp_path / "bin"
    shutil.copytree(DATA / "tiny-sharded", src)
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny_dir("mha_tied") / f, src / f)
    a, b = _export_both_ways(src, tmp_path, "q4_0", monkeypatch)
    assert a == b


@pytest.mark.parametrize("tensor", ["model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight",
                                    "model.embed_tokens.weight"])
def test_nan_still_refused_in_one_line(tensor, ckpt_256, tmp_path):
    src = tmp_path / "nan"
    shutil.copytree(ckpt_256, src)
    path = src / "model.safetensors"
    tensors = {n: np.array(safetensors_io.load(i)) for n, i in safetensors_io.read_header(path).items()}
    tensors[tensor][0, 3] = np.nan
    safetensors_io.write(path, tensors)
    out = tmp_path / "o.gguf"
    r = run_cli("export-gguf", src, "-o", out)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "contains 1 NaN/Inf values" in r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


def test_bulk_vocabulary_arrays_pack_like_gguf():
    plain, bulk = gguf.GGUFWriter(None, "minicpm"), gguf_export._Writer(None, "minicpm")
    rng = np.random.default_rng(0)
    cases = [
        [bytes(rng.integers(0, 256, int(n))) for n in rng.integers(0, 12, 1000)],
        ["▁tok" + chr(0x4E00 + i) for i in range(600)],
        [float(v) for v in rng.standard_normal(700) * 1e3] + [-1000.0, 0.0, -0.0],
        list(range(-300, 300)),
        [1.0] * 10,  # short: gguf's own path
        [1e300] * 300,  # refused by struct.pack: gguf's own path, same error
    ]
    for val in cases:
        for add_vtype in (True, False):
            try:
                want = plain._pack_val(val, gguf.GGUFValueType.ARRAY, add_vtype)
            except Exception as e:  # noqa: BLE001
                with pytest.raises(type(e)):
                    bulk._pack_val(val, gguf.GGUFValueType.ARRAY, add_vtype)
                continue
            assert bulk._pack_val(val, gguf.GGUFValueType.ARRAY, add_vtype) == want
