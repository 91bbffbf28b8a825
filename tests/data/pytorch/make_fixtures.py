"""Write the PyTorch ``.bin`` fixtures in this folder with the real ``torch.save`` (run by hand, needs torch).

    PYTHONPATH=<dir with mcpm_mobile -> toolkit> python tests/data/pytorch/make_fixtures.py

The files are committed so the tests need no torch. What each one exercises:
- ``tiny-single/pytorch_model.bin``: a whole tiny MiniCPM (f16) saved as transformers 4.3x did for the 1.x
  releases: ``lm_head.weight`` is the same tensor as ``model.embed_tokens.weight`` (one storage, two names) and
  each layer carries a ``rotary_emb.inv_freq`` buffer.
- ``tiny-sharded/``: the same weights in bf16, two shards and ``pytorch_model.bin.index.json``, tied by omission.
- ``layout.bin``: f32/f16/bf16 storages, a view at an offset into a larger storage, a transposed
  (non-contiguous) view, an ``nn.Parameter``, and int64/bool tensors.
- ``evil.bin``: a ``torch.save`` archive whose pickle calls ``os.system``; the reader must refuse it.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from mcpm_mobile.model.tiny import random_weights, tiny_config

HERE = Path(__file__).parent
# vocab 512 so the tokenizer of the tiny test checkpoints fits; small hidden size keeps the files a few KB
CONFIG = dict(layers=2, hidden=32, heads=2, kv_heads=1, vocab=512, tied=True, dtype="float16", max_position=128)
SEED = 7


def tensors(dtype) -> "OrderedDict[str, torch.Tensor]":
    cfg = tiny_config(**CONFIG)
    return OrderedDict((k, torch.from_numpy(v).to(dtype)) for k, v in random_weights(cfg, SEED).items())


def write_single() -> None:
    out = HERE / "tiny-single"
    out.mkdir(exist_ok=True)
    cfg = tiny_config(**CONFIG)
    cfg.pop("tie_word_embeddings")  # as in MiniCPM-2B-sft-bf16's config.json: decided by the weights
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = tensors(torch.float16)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # shared storage
    head_dim = CONFIG["hidden"] // CONFIG["heads"]
    for i in range(CONFIG["layers"]):
        sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = 1.0 / (
            10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    torch.save(sd, out / "pytorch_model.bin")


def write_sharded() -> None:
    out = HERE / "tiny-sharded"
    out.mkdir(exist_ok=True)
    cfg = tiny_config(**{**CONFIG, "dtype": "bfloat16"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = tensors(torch.bfloat16)
    names = list(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save(OrderedDict((n, sd[n]) for n in part), out / fname)
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_layout() -> None:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) / 8
    sd = OrderedDict()
    sd["f32"] = base
    sd["f32_rows_2_to_4"] = base[2:4]  # view at a storage offset
    sd["f32_transposed"] = base.t()  # non-contiguous strides
    sd["f16"] = (base * 0.5).half()
    sd["bf16"] = (base - 3).bfloat16()
    sd["param"] = torch.nn.Parameter(torch.linspace(-1, 1, 5))
    sd["i64"] = torch.arange(7, dtype=torch.int64)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    torch.save(sd, HERE / "layout.bin")


class _Evil:
    def __reduce__(self):
        return os.system, ("echo mcpm-mobile-evil-pickle-ran",)


def write_evil() -> None:
    torch.save(OrderedDict(weight=torch.zeros(2), payload=_Evil()), HERE / "evil.bin")


if __name__ == "__main__":
    write_single()
    write_sharded()
    write_layout()
    write_evil()
    print(torch.__version__, sorted(p.name for p in HERE.rglob("*.bin")))
