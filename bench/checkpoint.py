"""Generate a random bf16 checkpoint of a MiniCPM shape, streaming to disk (run by the bench in its own process,
never inside a timed figure).

    python bench/checkpoint.py OUT [--shape 0.5b|2b|8b] [--layers N]

Shapes (config.json of the published models): MiniCPM-2B (40 layers, hidden 2304, 36 heads, ffn 5760, vocab
122753, tied; 5.45 GB); MiniCPM4-0.5B (24 layers, hidden 1024, 16 heads / 2 KV heads, ffn 4096, vocab 73448,
tied; 0.87 GB); MiniCPM4-8B (32 layers, hidden 4096, 32 heads / 2 KV heads, ffn 16384, vocab 73448, untied;
16.4 GB; ``--layers`` keeps every dimension and cuts the depth).
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
    "2b": dict(layers=40, hidden=2304, heads=36, kv_heads=36, intermediate=5760, vocab=122753, tied=True),
    "0.5b": dict(layers=24, hidden=1024, heads=16, kv_heads=2, intermediate=4096, vocab=73448, tied=True),
    "8b": dict(layers=32, hidden=4096, heads=32, kv_heads=2, intermediate=16384, vocab=73448, tied=False),
}


def shape_dims(shape: str, layers: int | None = None) -> dict:
    return {**SHAPES[shape], **({"layers": layers} if layers else {})}


def checkpoint_bytes(shape: str, layers: int | None = None) -> int:
    s = shape_dims(shape, layers)
    h, i = s["hidden"], s["intermediate"]
    kv = s["kv_heads"] * h // s["heads"]
    heads = 1 if s["tied"] else 2
    return 2 * (heads * s["vocab"] * h + s["layers"] * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h)


def make(out: Path, shape: str = "2b", seed: int = 0, layers: int | None = None) -> Path:
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    need = checkpoint_bytes(shape, layers) * 1.05
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
    if free < need:
        sys.exit(f"bench: {out}: needs {need / 1e9:.1f} GB free disk for the {shape} checkpoint, {free / 1e9:.1f} GB available")
    s = shape_dims(shape, layers)
    cfg = tiny_config(s["layers"], s["hidden"], s["heads"], s["kv_heads"], s["intermediate"], s["vocab"], s["tied"],
                      "bfloat16", 4096 if shape == "2b" else 32768)
    cfg.update(dim_model_base=256, _name_or_path=f"mcpm-mobile/bench-minicpm-{shape}")
    rng = np.random.default_rng(seed)
    h, inter = s["hidden"], s["intermediate"]
    kv = s["kv_heads"] * h // s["heads"]
    specs = {"model.embed_tokens.weight": (s["vocab"], h)}
    for layer in range(s["layers"]):
        p = f"model.layers.{layer}."
        specs.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (h, h),
                      p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                      p + "self_attn.o_proj.weight": (h, h), p + "post_attention_layernorm.weight": (h,),
                      p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                      p + "mlp.down_proj.weight": (h, inter)})
    specs["model.norm.weight"] = (h,)
    if not s["tied"]:
        specs["lm_head.weight"] = (s["vocab"], h)

    def produce(name):
        shape_ = specs[name]
        if len(shape_) == 1:
            return np.ones(shape_, ml_dtypes.bfloat16)
        scale = 0.1 if "embed" in name else 1 / np.sqrt(shape_[1])
        if shape_[0] * shape_[1] > 1 << 26:  # big tensors in row blocks: the generator stays small
            out = np.empty(shape_, ml_dtypes.bfloat16)
            step = max(1, (1 << 24) // shape_[1])
            for r in range(0, shape_[0], step):
                rows = min(step, shape_[0] - r)
                out[r:r + rows] = (rng.standard_normal((rows, shape_[1]), dtype=np.float32) * scale).astype(
                    ml_dtypes.bfloat16)
            return out
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
    ap.add_argument("--shape", choices=list(SHAPES), default="2b")
    ap.add_argument("--layers", type=int)
    args = ap.parse_args()
    print(make(args.out, args.shape, layers=args.layers))
