"""The INT4 group quantizer against hand-computed vectors and an independent element-wise reference."""
import numpy as np
import pytest

from mcpm_mobile.quantize.group import dequantize_rows, pack, quantize_rows, unpack


def reference_quantize(w: np.ndarray, dtype=np.float32):
    """Element by element, written from the spec (groups of 32 along K, scale=max|w|/7, clamp 0..14)."""
    n, k = w.shape
    groups = -(-k // 32)
    codes = np.zeros((n, groups * 32), np.uint32)
    scales = np.zeros((n, groups), dtype)
    for r in range(n):
        for g in range(groups):
            vals = [dtype(w[r, j]) for j in range(g * 32, min(k, g * 32 + 32))]
            s = dtype(max(abs(v) for v in vals) / dtype(7))
            scales[r, g] = s
            for i in range(32):
                j = g * 32 + i
                x = dtype(w[r, j]) if j < k else dtype(0)  # the tail group is zero padded
                codes[r, j] = 7 if s == 0 else int(min(14, max(0, np.round(x / s + dtype(7)))))
    words = np.zeros((n, groups * 4), np.uint32)
    for r in range(n):
        for j in range(groups * 32):
            words[r, j // 8] |= np.uint32(codes[r, j]) << np.uint32(4 * (j % 8))
    return words, scales


def test_pack_order_low_nibble_first():
    codes = np.arange(8, dtype=np.uint32)[None, :]  # 0,1,...,7
    assert pack(codes)[0, 0] == 0x76543210
    assert (unpack(pack(codes)) == codes).all()


def test_hand_computed_group():
    w = np.zeros((1, 32), np.float32)
    w[0, 0], w[0, 1], w[0, 2], w[0, 3] = 7.0, -7.0, 0.5, 1.5  # scale = 1
    q, s = quantize_rows(w, "float32")
    assert s[0, 0] == 1.0
    codes = unpack(q)[0]
    assert codes[0] == 14 and codes[1] == 0  # +max -> 14 (never 15), -max -> 0
    assert codes[2] == 8 and codes[3] == 8  # round half to even: 7.5 -> 8, 8.5 -> 8
    assert (codes[4:] == 7).all()
    assert q[0, 0] == (14 | 0 << 4 | 8 << 8 | 8 << 12 | 7 << 16 | 7 << 20 | 7 << 24 | 7 << 28)


def test_all_zero_group_and_tail_group():
    w = np.zeros((2, 40), np.float32)
    w[1, 35] = -2.0
    q, s = quantize_rows(w, "float32")
    assert q.shape == (2, 8) and s.shape == (2, 2)
    assert s[0, 0] == 0 and (unpack(q)[0] == 7).all()
    assert np.isclose(s[1, 1], 2 / 7)
    dq = dequantize_rows(q, s, k=40)
    assert dq.shape == (2, 40) and dq[1, 35] == pytest.approx(-2.0) and (dq[0] == 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(5, 64), (3, 40), (7, 96)])
def test_matches_elementwise_reference(dtype, shape):
    rng = np.random.default_rng(42)
    w = rng.standard_normal(shape).astype(np.float32)
    q, s = quantize_rows(w, dtype)
    rq, rs = reference_quantize(w, np.dtype(dtype).type)
    assert (s == rs).all()
    assert (q == rq).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_error_bound_half_scale(dtype):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 3, (64, 1))).astype(np.float32)
    q, s = quantize_rows(w, dtype)
    dq = dequantize_rows(q, s).astype(np.float64)
    ref_w = w.astype(dtype).astype(np.float64)
    bound = np.repeat(s.astype(np.float64), 32, axis=1) / 2
    # f16: w/scale is rounded to f16 before rounding to an integer (ulp 2^-8 near 7) and so is the product
    slack = 1e-6 if dtype == "float32" else 0.01 * bound + 1e-3 * np.abs(ref_w)
    assert (np.abs(ref_w - dq) <= bound + slack).all()
    assert unpack(q).max() <= 14


def test_independent_dequantizer():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    q, s = quantize_rows(w, "float32")
    manual = np.zeros_like(w)
    for r in range(4):
        for j in range(64):
            code = (int(q[r, j // 8]) >> (4 * (j % 8))) & 0xF
            manual[r, j] = (code - 7) * s[r, j // 32]
    assert np.array_equal(manual, dequantize_rows(q, s))


@pytest.mark.parametrize("stored", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_compiled_quantizer_is_bit_exact(stored, dtype):
    """toolkit/kernels/mlc_group.py (what `quantize` runs) against the numpy quantizer: zero groups, ties, big values."""
    pytest.importorskip("tvm")
    import ml_dtypes

    from mcpm_mobile.kernels import mlc_group as kernel

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((97, 320)) * 0.05).astype(np.float32)
    w[3, 32:64] = 0
    w[5, :32] = 3e4
    w[7] = np.float32(0.035)
    w[8, :32] = np.arange(32, dtype=np.float32) / 2  # codes land on .5 ties
    stored_arr = {"BF16": w.astype(ml_dtypes.bfloat16), "F16": w.astype(np.float16), "F32": w}[stored]
    q, s, finite = kernel.quantize(stored_arr, stored, dtype)
    ref_q, ref_s = quantize_rows(stored_arr.astype(np.float32), dtype)
    assert finite
    assert np.array_equal(q, ref_q) and np.array_equal(s, ref_s)
    bad = stored_arr.copy()
    bad[50, 100] = np.inf
    assert not kernel.quantize(bad, stored, dtype)[2]
    if stored != "F16":  # beyond float16's range: flagged for a float16 model (the numpy path refuses it)
        big = stored_arr.copy()
        big[50, 100] = 7e4
        assert kernel.quantize(big, stored, dtype)[2] == (dtype == "float32")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_compiled_quantizer_reads_and_writes_unaligned_buffers(dtype):
    """Rows come straight from a memory map (any byte offset) and results go into slices of the caller's
    arrays: the kernel must not assume TVM's 64-byte alignment (an aligned vector load would fault)."""
    pytest.importorskip("tvm")
    import ml_dtypes

    from mcpm_mobile.kernels import mlc_group

    w = (np.random.default_rng(11).standard_normal((24, 256)) * 0.05).astype(ml_dtypes.bfloat16)
    ref_q, ref_s = quantize_rows(w.astype(np.float32), dtype)
    for off in range(0, 64, 2):
        buf = np.empty(w.nbytes + 64, np.uint8)
        rows = buf[off:off + w.nbytes].view(ml_dtypes.bfloat16).reshape(w.shape)
        rows[...] = w
        qbuf = np.empty(ref_q.nbytes + 64, np.uint8)
        q = qbuf[off * 2 % 64 + 4:][:ref_q.nbytes].view(np.uint32).reshape(ref_q.shape)
        s = np.empty(ref_s.shape, dtype)
        _, _, finite = mlc_group.quantize(rows, "BF16", dtype, q, s)
        assert finite and np.array_equal(q, ref_q) and np.array_equal(s, ref_s), off
