"""Compiled host libraries for the tiny checkpoints, built once per test session (shared by test modules)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

_LIBS: dict[tuple, Path] = {}


@pytest.fixture(scope="session")
def host_lib(quantized_dir, tmp_path_factory):
    """(variant, quantization, **compile overrides) -> (weights_dir, library path)."""
    from mcpm_mobile.compiler.compile import compile_model

    def get(name: str = "mha_tied", quantization: str = "q4f16_1", **overrides):
        weights = quantized_dir(name, quantization)
        key = (name, quantization, tuple(sorted(overrides.items())))
        if key not in _LIBS:
            tag = "-".join(f"{k}{v}" for k, v in sorted(overrides.items()))
            out = tmp_path_factory.mktemp("libs") / f"{name}-{quantization}{'-' + tag if tag else ''}.so"
            compile_model(weights, "host", out, **overrides)
            _LIBS[key] = out
        return weights, _LIBS[key]

    return get


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def chat_config(weights: Path) -> dict:
    return json.loads((weights / "mlc-chat-config.json").read_text())
