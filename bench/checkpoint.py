"""Generate a MiniCPM-2B-shaped random bf16 checkpoint (or a 0.5B shape with --small), streaming to disk.

MiniCPM-2B: 40 layers, hidden 2304, 36 heads, ffn 5760, vocab 122753, tied (about 5.4 GB in bf16).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from mcpm_mobile.support import safetensors_io
from mcpm_mobile.model.tiny import tiny_config, train_tokenizer
from mcpm_mobile.model.tokenizer import sentencepiece_to_tokenizer_json

SHAPES = {
    "2b": dict(layers=40, hidden=2304, heads=36, intermediate=5760, vocab=122753),
    "small": dict(layers=24, hidden=1024, heads=16, intermediate=2560, vocab=122753),
}


def checkpoint_bytes(shape: str) -> int:
    s = SHAPES[shape]
    h, i = s["hidden"], s["intermediate"]
    return 2 * (s["vocab"] * h + s["layers"] * (4 * h * h + 3 * h * i + 2 * h) + h)


def make(out: Path, shape: str = "2b", seed: int = 0) -> Path:
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    need = checkpoint_bytes(shape) * 1.05
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
    if free < need:
        sys.exit(f"bench: {out}: needs {need / 1e9:.1f} GB free disk for the {shape} checkpoint, {free / 1e9:.1f} GB available")
    s = SHAPES[shape]
    cfg = tiny_config(s["layers"], s["hidden"], s["heads"], None, s["intermediate"], s["vocab"], True, "bfloat16", 4096)
    cfg.update(dim_model_base=256, _name_or_path=f"mcpm-mobile/bench-minicpm-{shape}")
    rng = np.random.default_rng(seed)
    h, inter = s["hidden"], s["intermediate"]
    specs = {"model.embed_tokens.weight": (s["vocab"], h)}
    for layer in range(s["layers"]):
        p = f"model.layers.{layer}."
        specs.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (h, h),
                      p + "self_attn.k_proj.weight": (h, h), p + "self_attn.v_proj.weight": (h, h),
                      p + "self_attn.o_proj.weight": (h, h), p + "post_attention_layernorm.weight": (h,),
                      p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                      p + "mlp.down_proj.weight": (h, inter)})
    specs["model.norm.weight"] = (h,)

    def produce(name):
        shape_ = specs[name]
        if len(shape_) == 1:
            return np.ones(shape_, ml_dtypes.bfloat16)
        scale = 0.1 if "embed" in name else 1 / np.sqrt(shape_[1])
        return (rng.standard_normal(shape_, dtype=np.float32) * scale).astype(ml_dtypes.bfloat16)

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "tokenizer.model").write_bytes(train_tokenizer(512, seed))
    (out / "tokenizer.json").write_text(sentencepiece_to_tokenizer_json(out / "tokenizer.model"), encoding="utf-8")
    tmp = out / "model.safetensors.partial"
    safetensors_io.write_stream(tmp, {k: (v, ml_dtypes.bfloat16) for k, v in specs.items()}, produce, {"format": "pt"})
    tmp.rename(out / "model.safetensors")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    print(make(args.out, "small" if args.small else "2b"))
