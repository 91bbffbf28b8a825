"""Shared fixtures: tiny MiniCPM checkpoints in HF layout, built once per test session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm_mobile.cli import main
from mcpm_mobile.model.tiny import write_tiny_checkpoint

VARIANTS = {
    # name: keyword arguments of write_tiny_checkpoint
    "mha_tied": dict(layers=2, hidden=64, heads=4, vocab=512, tied=True, dtype="bfloat16", seed=0),
    "gqa_untied": dict(layers=2, hidden=64, heads=4, kv_heads=2, vocab=512, tied=False, dtype="float16", seed=1),
    "gqa_tied_f32": dict(layers=3, hidden=128, heads=4, kv_heads=1, vocab=640, tied=True, dtype="float32", seed=2),
    "mha_untied_sharded": dict(layers=2, hidden=96, heads=3, vocab=512, tied=None, dtype="bfloat16", seed=3, shards=3),
    # LongRoPE (tests/test_longrope.py): max_position_embeddings equal to / 4x original_max_position_embeddings
    "longrope_equal_mha": dict(layers=2, hidden=64, heads=4, vocab=512, tied=True, dtype="float32", seed=4,
                               max_position=512, rope_scaling="longrope"),
    "longrope_larger_gqa": dict(layers=2, hidden=64, heads=4, kv_heads=2, vocab=512, tied=False, dtype="float32",
                                seed=5, max_position=512, rope_scaling="longrope", original_max_position=128),
}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Return a function: variant name -> path of that tiny checkpoint (created on first use)."""
    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, Path] = {}

    def get(name: str = "mha_tied") -> Path:
        if name not in made:
            made[name] = write_tiny_checkpoint(root / name, **VARIANTS[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def quantized_dir(tiny_dir, tmp_path_factory):
    """Return a function: (variant, quantization) -> MLC weights dir (created on first use)."""
    from mcpm_mobile.quantize.convert import quantize_checkpoint

    root = tmp_path_factory.mktemp("quantized")
    made: dict[tuple, Path] = {}

    def get(name: str = "mha_tied", quantization: str = "q4f16_1") -> Path:
        key = (name, quantization)
        if key not in made:
            made[key] = root / f"{name}-{quantization}"
            quantize_checkpoint(tiny_dir(name), made[key], quantization)
        return made[key]

    return get


def run_cli(*args: str):
    """Invoke the CLI in-process; returns click's Result."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))
