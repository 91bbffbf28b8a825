"""The kernel cache (support/cache.py): built once, loaded without importing tvm, damaged entries rebuilt."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mcpm_mobile.quantize.group import quantize_rows

pytest.importorskip("tvm")

# A fresh interpreter quantizes rows with the cached kernel and says whether it had to import tvm.
PROBE = """
import json, sys
import numpy as np
from mcpm_mobile.kernels import mlc_group as kernel
rows = (np.random.default_rng(3).standard_normal((40, 96)) * 0.1).astype(np.float16)
q, s, finite = kernel.quantize(rows, "F16", "float16")
print(json.dumps({"tvm": "tvm" in sys.modules, "q": q.tolist(), "s": s.astype(float).tolist(), "finite": finite}))
"""


def _probe(cache) -> dict:
    env = {**os.environ, "MCPM_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _expected():
    rows = (np.random.default_rng(3).standard_normal((40, 96)) * 0.1).astype(np.float16)
    return quantize_rows(rows.astype(np.float32), "float16")


def test_built_once_then_loaded_without_tvm(tmp_path):
    q, s = _expected()
    first = _probe(tmp_path)
    assert first["tvm"]  # cold: compiled with tvm
    entries = list((tmp_path / "kernels").glob("*.so"))
    assert len(entries) == 1 and entries[0].name.startswith("mlc-group-float16-float16-")
    second = _probe(tmp_path)
    assert not second["tvm"]  # warm: tvm_ffi and the runtime library only
    for run in (first, second):
        assert run["finite"]
        assert np.array_equal(np.array(run["q"], np.uint32), q)
        assert np.array_equal(np.array(run["s"], np.float16), s)


def test_damaged_entry_is_rebuilt(tmp_path):
    _probe(tmp_path)
    (entry,) = (tmp_path / "kernels").glob("*.so")
    entry.write_bytes(entry.read_bytes()[:4096])  # truncated: dlopen of it would crash the process
    run = _probe(tmp_path)
    assert run["tvm"] and np.array_equal(np.array(run["q"], np.uint32), _expected()[0])
    assert entry.stat().st_size > 4096


def test_unwritable_cache_still_quantizes(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = _probe(blocker)  # the cache root is a file: nothing can be cached, the kernel runs anyway
    assert np.array_equal(np.array(run["q"], np.uint32), _expected()[0])
    assert blocker.read_text() == "not a directory"


def test_key_covers_source_and_machine():
    from mcpm_mobile.support.cache import kernel_key

    assert kernel_key("k", "a") != kernel_key("k", "b")
    assert kernel_key("k", "a") == kernel_key("k", "a")
    assert kernel_key("k", "a").startswith("k-")


def test_rows_are_read_in_place_from_a_private_map(tmp_path):
    """The loaders map only the requested rows; a private map is writable in memory, never on disk."""
    from mcpm_mobile.support import safetensors_io

    w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    path = tmp_path / "m.safetensors"
    safetensors_io.write(path, {"w": w})
    info = safetensors_io.read_header(path)["w"]
    before = path.read_bytes()
    part = safetensors_io.load(info, slice(10, 20), private=True)
    assert np.array_equal(part, w[10:20]) and part.base.size == 10 * 32 * 4
    part[:] = 0
    assert path.read_bytes() == before
    assert not safetensors_io.load(info, slice(10, 20)).flags.writeable
