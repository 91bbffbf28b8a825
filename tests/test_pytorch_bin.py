"""PyTorch ``.bin`` checkpoints, read without torch: fixtures written by the real ``torch.save`` 2.13
(tests/data/pytorch/make_fixtures.py), checked value by value against what was saved."""
from __future__ import annotations

import json
import shutil
import pickle
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from mcpm_mobile.errors import MCPMError
from mcpm_mobile.support import pytorch_bin
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.tiny import random_weights, tiny_config

from conftest import run_cli

DATA = Path(__file__).parent / "data" / "pytorch"
FIXTURE_CONFIG = dict(layers=2, hidden=32, heads=2, kv_heads=1, vocab=512, tied=True, dtype="float16",
                      max_position=128)
FIXTURE_SEED = 7


def _expected(dtype) -> dict[str, np.ndarray]:
    return {k: v.astype(dtype).astype(np.float32)
            for k, v in random_weights(tiny_config(**FIXTURE_CONFIG), FIXTURE_SEED).items()}


def test_layout_values_dtypes_and_views():
    t = pytorch_bin.read_header(DATA / "layout.bin")
    base = np.arange(48, dtype=np.float32).reshape(6, 8) / 8
    load = lambda n: pytorch_bin.load(t[n])  # noqa: E731
    assert t["f32"].dtype == "F32" and t["f16"].dtype == "F16" and t["bf16"].dtype == "BF16"
    np.testing.assert_array_equal(load("f32"), base)
    np.testing.assert_array_equal(load("f32_rows_2_to_4"), base[2:4])
    assert t["f32_rows_2_to_4"].offset == 16 and t["f32_rows_2_to_4"].storage_begin == t["f32"].storage_begin
    np.testing.assert_array_equal(load("f32_transposed"), base.T)
    assert t["f32_transposed"].strides == (1, 8)
    np.testing.assert_array_equal(load("f16"), (base * 0.5).astype(np.float16))
    assert load("bf16").dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(load("bf16").astype(np.float32), base - 3)
    np.testing.assert_allclose(load("param"), np.linspace(-1, 1, 5), rtol=1e-6)
    np.testing.assert_array_equal(load("i64"), np.arange(7))
    np.testing.assert_array_equal(load("bool"), [True, False, True])
    assert load("scalar").shape == () and float(load("scalar")) == 2.5
    assert load("empty").shape == (0, 4)
    assert t["f32"].nbytes == 48 * 4 and t["f32_rows_2_to_4"].nbytes == 16 * 4
    with pytest.raises(ValueError):  # memory-mapped read-only: the checkpoint cannot be modified through a view
        load("f32")[0, 0] = 1
    for name, full in (("f32", base), ("f32_rows_2_to_4", base[2:4]), ("f32_transposed", base.T)):
        for rows in (slice(0, 1), slice(1, 2), slice(1, None), slice(0, 0)):  # only those rows' bytes are mapped
            part = pytorch_bin.load(t[name], rows, private=True)
            np.testing.assert_array_equal(part, full[rows])
            if part.size:
                part[...] = -1  # copy-on-write: the file is untouched
    np.testing.assert_array_equal(load("f32"), base)


def test_malicious_pickle_is_refused_without_running_it(capfd):
    with pytest.raises(MCPMError) as e:
        pytorch_bin.read_header(DATA / "evil.bin")
    msg = str(e.value)
    assert msg.startswith(str(DATA / "evil.bin")) and "references posix.system" in msg
    assert "\n" not in msg
    assert "mcpm-mobile-evil-pickle-ran" not in capfd.readouterr().out


def test_single_file_shared_storage_checkpoint():
    ckpt = Checkpoint(DATA / "tiny-single")
    assert ckpt.format is pytorch_bin
    emb, head = ckpt.tensors["model.embed_tokens.weight"], ckpt.tensors["lm_head.weight"]
    assert (emb.storage_begin, emb.offset) == (head.storage_begin, head.offset)  # one storage, two names
    assert not any("inv_freq" in n for n in ckpt.tensors)  # rotary buffers are not weights
    assert ckpt.config.tie_word_embeddings is False  # config has no key; lm_head.weight is present
    for name, want in _expected(np.float16).items():
        np.testing.assert_array_equal(ckpt.get(name), want, err_msg=name)
    np.testing.assert_array_equal(ckpt.get("lm_head.weight"), ckpt.get("model.embed_tokens.weight"))
    np.testing.assert_array_equal(ckpt.get("model.embed_tokens.weight", slice(3, 9)),
                                  _expected(np.float16)["model.embed_tokens.weight"][3:9])
    assert len(ckpt.fingerprint()) == 64


def test_sharded_checkpoint():
    ckpt = Checkpoint(DATA / "tiny-sharded")
    assert [f.name for f in ckpt.files] == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert ckpt.config.tie_word_embeddings is True
    for name, want in _expected(ml_dtypes.bfloat16).items():
        np.testing.assert_array_equal(ckpt.get(name), want, err_msg=name)


def test_safetensors_wins_when_both_are_present(tmp_path, tiny_dir):
    d = tmp_path / "both"
    shutil.copytree(tiny_dir("mha_tied"), d)
    shutil.copy(DATA / "tiny-single" / "pytorch_model.bin", d)
    assert Checkpoint(d).format is not pytorch_bin


def _bin_checkpoint(tmp_path: Path, tiny_dir, which: str = "tiny-single") -> Path:
    """A fixture's .bin weights with the tokenizer files of the tiny test checkpoint (same vocabulary)."""
    d = tmp_path / which
    shutil.copytree(DATA / which, d)
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny_dir("mha_tied") / f, d / f)
    return d


def _twin_safetensors(tmp_path: Path, src: Path) -> Path:
    """The same weights and files as ``src``, as model.safetensors (written by our own writer)."""
    from mcpm_mobile.support import safetensors_io

    d = tmp_path / (src.name + "-st")
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.bin", "*.bin.index.json"))
    ckpt = Checkpoint(src)
    safetensors_io.write(d / "model.safetensors",
                         {n: np.ascontiguousarray(ckpt.format.load(ckpt.tensors[n])) for n in ckpt.tensors})
    return d


@pytest.mark.parametrize("which", ["tiny-single", "tiny-sharded"])
def test_quantize_bin_equals_safetensors(tmp_path, tiny_dir, which):
    src = _bin_checkpoint(tmp_path, tiny_dir, which)
    twin = _twin_safetensors(tmp_path, src)
    for d, out in ((src, tmp_path / "q-bin"), (twin, tmp_path / "q-st")):
        r = run_cli("quantize", d, "-o", out, "--quantization", "q4f16_1")
        assert r.exit_code == 0, r.output
    shards = sorted(p.name for p in (tmp_path / "q-bin").glob("params_shard_*.bin"))
    assert shards
    for s in shards:
        assert (tmp_path / "q-bin" / s).read_bytes() == (tmp_path / "q-st" / s).read_bytes(), s


def test_export_gguf_from_bin(tmp_path, tiny_dir):
    src = _bin_checkpoint(tmp_path, tiny_dir, "tiny-sharded")
    r = run_cli("export-gguf", src, "-o", tmp_path / "m.gguf")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.gguf").stat().st_size > 0


# --- bad input: one line naming the file, exit 2 ------------------------------------------------------

def _rewrite_member(path: Path, member_suffix: str, data: bytes) -> None:
    """Rewrite one member of a torch archive (kept uncompressed, like torch writes it)."""
    src = zipfile.ZipFile(path)
    items = [(i, src.read(i.filename)) for i in src.infolist()]
    src.close()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info, blob in items:
            out.writestr(info, data if info.filename.endswith(member_suffix) else blob)


def _truncate_storage(p: Path):
    name = next(n for n in zipfile.ZipFile(p).namelist() if n.endswith("/data/0"))
    _rewrite_member(p, name.split("/", 1)[1], b"\0" * 8)


def _bad_stride(p: Path):
    z = zipfile.ZipFile(p)
    pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    z.close()
    # the embedding's size tuple (512, 32) -> (513, 32): one row past the end of its storage
    old = b"M\x00\x02K \x86"
    assert old in pkl
    _rewrite_member(p, "data.pkl", pkl.replace(old, b"M\x01\x02K \x86", 1))


def _compressed(p: Path):
    z = zipfile.ZipFile(p)
    items = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    z.close()
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as out:
        for n, b in items:
            out.writestr(n, b)


BAD = {
    # the legacy format starts with a pickled magic number, then more pickles and raw storages
    "legacy": (lambda p: p.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\0" * 64), "legacy pre-1.6"),
    "storage_too_small": (_truncate_storage, "storage 0 has 8 bytes"),
    "size_past_storage": (_bad_stride, "reaches past its storage"),
    "compressed": (_compressed, "is compressed"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "pytorch_model.bin"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_bin(case, tmp_path, tiny_dir):
    d = _bin_checkpoint(tmp_path, tiny_dir)
    mutate, expect = BAD[case]
    mutate(d / "pytorch_model.bin")
    out = tmp_path / "out"
    r = run_cli("quantize", d, "-o", out)
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert expect in line and "pytorch_model.bin" in line, line
    assert not out.exists()


def test_shard_index_cannot_point_outside(tmp_path, tiny_dir):
    d = _bin_checkpoint(tmp_path, tiny_dir, "tiny-sharded")
    idx = d / "pytorch_model.bin.index.json"
    data = json.loads(idx.read_text())
    data["weight_map"]["model.norm.weight"] = "../elsewhere.bin"
    idx.write_text(json.dumps(data))
    r = run_cli("quantize", d, "-o", tmp_path / "out")
    assert r.exit_code == 2 and "leaves" in r.output and "pytorch_model.bin.index.json" in r.output


def test_device_profile_reads_bin_checkpoints():
    from mcpm_mobile.devices import model_profile_from_path

    single = model_profile_from_path(DATA / "tiny-single")  # lm_head.weight present (shared storage): untied
    sharded = model_profile_from_path(DATA / "tiny-sharded")
    assert single.weight_bytes > sharded.weight_bytes


def test_writer_round_trip_and_matches_torch_layout(tmp_path):
    """Our writer (for stand-ins of .bin releases) against our reader; that real torch.load(weights_only=True)
    reads its files was checked by hand with torch 2.13 (tests/data/pytorch/make_fixtures.py's environment)."""
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b": (np.arange(70000) / 7).astype(ml_dtypes.bfloat16), "c": np.arange(3, dtype=np.float16),
               "s": np.array(2.5, np.float32)}
    pytorch_bin.write(tmp_path / "w.bin", tensors)
    got = pytorch_bin.read_header(tmp_path / "w.bin")
    assert list(got) == list(tensors)
    for name, want in tensors.items():
        arr = pytorch_bin.load(got[name])
        assert arr.dtype == want.dtype and arr.shape == want.shape
        np.testing.assert_array_equal(arr, want)
        assert got[name].storage_begin % 64 == 0  # torch aligns storages; so does the writer
    # the same globals as a real torch.save archive, and nothing else
    real = zipfile.ZipFile(DATA / "tiny-single" / "pytorch_model.bin")
    ours = zipfile.ZipFile(tmp_path / "w.bin")
    real_pkl = real.read(next(n for n in real.namelist() if n.endswith("data.pkl")))
    ours_pkl = ours.read("w/data.pkl")
    import pickletools
    globals_of = lambda b: {a for op, a, _ in pickletools.genops(b) if op.name == "GLOBAL"}  # noqa: E731
    assert globals_of(ours_pkl) <= globals_of(real_pkl) | {"torch BFloat16Storage", "torch FloatStorage"}
