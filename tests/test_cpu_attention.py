"""The host attention kernels (compiler/cpu_attention.py) against a numpy softmax attention: GQA, causal
masks across chunk boundaries, a prefill chunk attending to earlier pages, and rows past the 16-key tiles."""
from __future__ import annotations

import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from mcpm_mobile.compiler import cpu_attention  # noqa: E402

H_QO, H_KV, D, P = 8, 2, 64, 16


def reference(q, k, v, causal, sm_scale):
    """Output [n_q, H_qo, D] and lse (log2 of the softmax denominator, in the scaled log2 domain)."""
    n_q, n_kv, group = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    out = np.zeros(q.shape, np.float32)
    lse = np.zeros(q.shape[:2], np.float32)
    for h in range(q.shape[1]):
        s = q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T * sm_scale * math.log2(math.e)
        if causal:
            s[np.arange(n_kv)[None, :] > (n_kv - n_q + np.arange(n_q))[:, None]] = -np.inf
        m = s.max(axis=1, keepdims=True)
        p = np.exp2(s - m)
        out[:, h] = (p @ v[:, h // group].astype(np.float64)) / p.sum(axis=1, keepdims=True)
        lse[:, h] = (m[:, 0] + np.log2(p.sum(axis=1)))
    return out, lse


def build(func):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "llvm")["main"]


@pytest.mark.parametrize("n_q,n_kv,causal", [(37, 37, 1), (5, 5, 1), (1, 1, 1), (40, 40, 0)])
def test_ragged_prefill(n_q, n_kv, causal):
    rng = np.random.default_rng(n_q)
    q = rng.standard_normal((n_q, H_QO, D)).astype(np.float16)
    k = rng.standard_normal((n_kv, H_KV, D)).astype(np.float16)
    v = rng.standard_normal((n_kv, H_KV, D)).astype(np.float16)
    f = build(cpu_attention.prefill_ragged_tiled(H_KV, H_QO, D, "float16", {}))
    dev = tvm.cpu()
    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
    out, lse = t(np.zeros_like(q)), t(np.zeros((n_q, H_QO), np.float32))
    f(t(q), t(np.array([0, n_q], np.int32)), t(k), t(v), t(np.array([0, n_kv], np.int32)),
      t(np.arange(n_q, dtype=np.int32)), t(np.zeros(1, np.int32)), out, lse, causal, 0, 1.0, 1e4, 1 / math.sqrt(D))
    ref, ref_lse = reference(q, k, v, causal, 1 / math.sqrt(D))
    np.testing.assert_allclose(out.numpy().astype(np.float32), ref, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(lse.numpy(), ref_lse, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("n_q,n_kv,causal", [(20, 53, 0), (20, 53, 1), (3, 16, 1), (33, 0, 0)])
def test_paged_prefill(n_q, n_kv, causal):
    """The KV sits in shuffled pages; the last page is partly filled."""
    rng = np.random.default_rng(n_kv)
    q = rng.standard_normal((n_q, H_QO, D)).astype(np.float16)
    k = rng.standard_normal((n_kv, H_KV, D)).astype(np.float16)
    v = rng.standard_normal((n_kv, H_KV, D)).astype(np.float16)
    n_pages = -(-n_kv // P)
    max_pages = n_pages + 3
    order = rng.permutation(max_pages)[:n_pages].astype(np.int32)
    pages = rng.standard_normal((max_pages, 2, H_KV, P, D)).astype(np.float16)  # garbage outside the sequence
    for i in range(n_kv):
        pages[order[i // P], 0, :, i % P] = k[i]
        pages[order[i // P], 1, :, i % P] = v[i]
    last = n_kv - (n_pages - 1) * P if n_pages else 0
    f = build(cpu_attention.prefill_paged_tiled(H_KV, H_QO, D, "float16", {}, P))
    dev = tvm.cpu()
    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
    out, lse = t(np.zeros_like(q)), t(np.zeros((n_q, H_QO), np.float32))
    f(t(q), t(np.array([0, n_q], np.int32)), t(pages), t(np.array([0, n_pages], np.int32)),
      t(order if n_pages else np.zeros(1, np.int32)), t(np.array([last], np.int32)), t(np.zeros(1, np.int32)),
      t(np.arange(n_q, dtype=np.int32)), out, lse, causal, 0, 1.0, 1e4, 1 / math.sqrt(D))
    if n_kv == 0:
        assert np.all(out.numpy() == 0)
        return
    ref, ref_lse = reference(q, k, v, causal, 1 / math.sqrt(D))
    np.testing.assert_allclose(out.numpy().astype(np.float32), ref, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(lse.numpy(), ref_lse, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("n_kv", [1, 16, 45])
def test_grouped_decode(n_kv):
    """Two sequences, one query token each, KV in shuffled pages (the grouped-query decode kernel)."""
    rng = np.random.default_rng(n_kv)
    lens = [n_kv, n_kv + 7]
    q = rng.standard_normal((2, H_QO, D)).astype(np.float16)
    ks = [rng.standard_normal((n, H_KV, D)).astype(np.float16) for n in lens]
    vs = [rng.standard_normal((n, H_KV, D)).astype(np.float16) for n in lens]
    counts = [-(-n // P) for n in lens]
    order = rng.permutation(sum(counts) + 2)[:sum(counts)].astype(np.int32)
    pages = rng.standard_normal((sum(counts) + 2, 2, H_KV, P, D)).astype(np.float16)
    start = 0
    for n, k, v, c in zip(lens, ks, vs, counts):
        for i in range(n):
            pages[order[start + i // P], 0, :, i % P] = k[i]
            pages[order[start + i // P], 1, :, i % P] = v[i]
        start += c
    f = build(cpu_attention.decode_attention_tiled(H_KV, H_QO, D, "float16", {}, P))
    dev = tvm.cpu()
    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
    out, lse = t(np.zeros_like(q)), t(np.zeros((2, H_QO), np.float32))
    last = np.array([n - (c - 1) * P for n, c in zip(lens, counts)], np.int32)
    f(t(q), t(pages), t(np.array([0, counts[0], sum(counts)], np.int32)), t(order), t(last),
      t(np.zeros(2, np.int32)), t(np.array(lens, np.int32)), out, lse, 0, 1.0, 1e4, 1 / math.sqrt(D))
    for b in range(2):
        ref, ref_lse = reference(q[b:b + 1], ks[b], vs[b], 0, 1 / math.sqrt(D))
        np.testing.assert_allclose(out.numpy()[b].astype(np.float32), ref[0], atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(lse.numpy()[b], ref_lse[0], atol=1e-3, rtol=1e-4)
