"""Tiny random MiniCPM checkpoints in the real Hugging Face layout, generated deterministically.

No weights can be downloaded here, so tests and the demo run the real code paths on these:
``config.json``, ``model.safetensors`` (or shards with an index), a SentencePiece tokenizer trained
locally (BPE, byte fallback, ``<用户>``/``<AI>`` as user-defined pieces) and its ``tokenizer.json``.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from mcpm_mobile.model.config import TEST_CHECKPOINT_NAME, MiniCPMConfig
from mcpm_mobile.model.param_map import EMBED, hf_shapes
from mcpm_mobile.model.tokenizer import sentencepiece_to_tokenizer_json
from mcpm_mobile.support import safetensors_io
from mcpm_mobile.support.atomic import atomic_dir

CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}{{'<用户>' + message['content'].strip() "
                 "+ '<AI>'}}{% else %}{{message['content'].strip()}}{% endif %}{% endfor %}")
USER_PIECES = ["<用户>", "<AI>"]

_WORDS = ("the model runs on a phone with four bit weights and a small cache of keys and values while the "
          "compiler writes kernels for the graphics processor memory bandwidth decides how fast each token "
          "comes out people ask questions and the assistant answers in plain words numbers like 2048 and "
          "128 tokens per second appear in tables").split()
_HANZI = "手机上运行的模型使用四位权重和小型缓存编译器为图形处理器生成内核内存带宽决定每个词元的速度用户提问助手回答你好世界今天天气很好我们"


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(lines):
        en = " ".join(rng.choice(_WORDS, size=rng.integers(4, 14)))
        zh = "".join(rng.choice(list(_HANZI), size=rng.integers(3, 12)))
        num = str(rng.integers(0, 100000))
        out.append(f"<用户>{en} {num}<AI>{zh}，{en.capitalize()}。" if rng.random() < 0.3 else f"{en}. {zh} {num}")
    return out


def train_tokenizer(vocab_size: int, seed: int = 0, pieces: list[str] | None = None) -> bytes:
    """Train a SentencePiece BPE model with exactly ``vocab_size`` pieces; returns the model bytes.

    ``pieces``: user-defined pieces given ids 3, 4, ... (default MiniCPM 1.x's ``<用户>``, ``<AI>``)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, user_defined_symbols=pieces or USER_PIECES, character_coverage=1.0, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        hard_vocab_limit=True, minloglevel=2, seed_sentencepiece_size=100000,
    )
    return buf.getvalue()


def longrope_factors(head_dim: int) -> dict:
    """Stand-in LongRoPE factors: short ones grow from 1 to 100 across the dimension pairs, as MiniCPM4's do
    (about 1 to 124); long ones run differently (2 to 20), so using the wrong set shows in the logits."""
    half = head_dim // 2
    return {"short_factor": [round(float(x), 6) for x in np.geomspace(1.0, 100.0, half)],
            "long_factor": [round(float(x), 6) for x in np.geomspace(2.0, 20.0, half)]}


def tiny_config(layers=2, hidden=64, heads=4, kv_heads=None, intermediate=None, vocab=512, tied=True,
                dtype="bfloat16", max_position=512, rope_scaling=None, original_max_position=None) -> dict:
    cfg = {
        "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "_name_or_path": TEST_CHECKPOINT_NAME,
        "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads, "intermediate_size": intermediate or (hidden * 5 // 2 + 31) // 32 * 32,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": max_position,
        "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": hidden // 4 if hidden >= 4 else 1,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype, "use_cache": True,
        "initializer_range": 0.1,
    }
    if tied is not None:
        cfg["tie_word_embeddings"] = bool(tied)
    if rope_scaling == "longrope":  # key order and names as MiniCPM4's config.json
        cfg["rope_scaling"] = {"rope_type": "longrope", **longrope_factors(hidden // heads),
                               "original_max_position_embeddings": original_max_position or max_position}
    elif rope_scaling is not None:
        raise ValueError(f"unknown rope_scaling {rope_scaling!r}")
    return cfg


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights with HF names; scaled so activations stay O(1) through the muP scalings."""
    rng = np.random.default_rng(seed)
    config = MiniCPMConfig.from_dict(cfg)
    weights = {}
    for name, shape in hf_shapes(config, tied=cfg.get("tie_word_embeddings") is not False).items():
        if name == EMBED:
            w = 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[1])
        weights[name] = w.astype(np.float32)
    return weights


_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def write_tiny_checkpoint(out_dir: Path, layers=2, hidden=64, heads=4, kv_heads=None, intermediate=None,
                          vocab=512, tied=True, dtype="bfloat16", seed=0, shards=1, max_position=512,
                          rope_scaling=None, original_max_position=None, force=False) -> Path:
    """Write a random MiniCPM checkpoint in HF layout to ``out_dir`` (atomically).

    ``rope_scaling="longrope"`` adds MiniCPM4-style LongRoPE factors with ``original_max_position``
    (default ``max_position``: the short factors apply; smaller: the long ones and an amplitude > 1)."""
    cfg = tiny_config(layers, hidden, heads, kv_heads, intermediate, vocab, tied, dtype, max_position, rope_scaling,
                      original_max_position)
    weights = {k: v.astype(_NP_DTYPES[dtype]) for k, v in random_weights(cfg, seed).items()}
    sp_model = train_tokenizer(vocab, seed)
    with atomic_dir(Path(out_dir), force=force, kind="checkpoint") as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        _write_weights(tmp, weights, shards)
        (tmp / "tokenizer.model").write_bytes(sp_model)
        (tmp / "tokenizer.json").write_text(sentencepiece_to_tokenizer_json(tmp / "tokenizer.model"), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": True,
            "model_max_length": max_position, "chat_template": CHAT_TEMPLATE,
        }, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps({
            "bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.8, "top_p": 0.8,
            "repetition_penalty": 1.02,
        }, indent=2))
    return Path(out_dir)


def _write_weights(out: Path, weights: dict[str, np.ndarray], shards: int) -> None:
    meta = {"format": "pt"}
    if shards <= 1:
        safetensors_io.write(out / "model.safetensors", weights, meta)
        return
    names = list(weights)
    parts = np.array_split(np.arange(len(names)), shards)
    weight_map = {}
    for i, idx in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        safetensors_io.write(out / fname, {names[j]: weights[names[j]] for j in idx}, meta)
        weight_map.update({names[j]: fname for j in idx})
    total = sum(a.nbytes for a in weights.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
