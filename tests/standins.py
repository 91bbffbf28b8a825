"""Tiny stand-ins for the MiniCPM releases people download (toolkit/model/releases.py).

Each keeps its release's ``config.json`` key set and values except the sizes (hidden size, layers, heads at the
same query/KV ratio class, vocabulary), its weight file layout (``pytorch_model.bin``, ``.bin`` shards with an
index, ``model.safetensors`` or safetensors shards), its tokenizer files, ``generation_config.json``, the
model card front matter with the licence it declares and the remote-code file names. Where the release uses
ChatML, ``<|im_end|>``/``<|im_start|>`` are real tokens and the second ``eos_token_id``, as in MiniCPM4.

LongRoPE: MiniCPM4/4.1 carry ``rope_scaling`` ``longrope``. Until mcpm-mobile reads it (the longrope branch:
``mcpm_mobile.model.rope``), ``LONGROPE`` is False and the stand-ins are written without that key, so every
other fact of the release is still exercised; once it is there, the stand-ins carry it as released.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from mcpm_mobile.support import pytorch_bin, safetensors_io
from mcpm_mobile.model.releases import LONGROPE as LONGROPE_TYPE
from mcpm_mobile.model.releases import RELEASES, Release
from mcpm_mobile.model.tiny import CHAT_TEMPLATE, random_weights, train_tokenizer
from mcpm_mobile.model.tokenizer import sentencepiece_to_tokenizer_json

LONGROPE = importlib.util.find_spec("mcpm_mobile.model.rope") is not None
VOCAB = 512
CHATML_PIECES = ["<|im_end|>", "<|im_start|>"]  # ids 3 and 4 in the stand-in (73440, 73441 in MiniCPM4)
# ChatML as the releases' tokenizer_config.json renders it; 4.1 adds the enable_thinking switch
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
                   "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
THINKING_TEMPLATE = CHATML_TEMPLATE.replace(
    "{{ '<|im_start|>assistant\\n' }}",
    "{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}")
# tiny sizes by attention shape: (hidden, heads, kv_heads); head_dim 16, multiples of the 32-wide groups
SHAPES = {1: (64, 4, 4), 3: (96, 6, 2), 8: (128, 8, 1), 16: (128, 8, 1)}
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


def standin_config(release: Release, longrope: bool = LONGROPE) -> dict:
    cfg = copy.deepcopy(release.config)
    ratio = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    hidden, heads, kv = SHAPES[ratio]
    eos = cfg["eos_token_id"]
    cfg.update(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, num_hidden_layers=2,
               intermediate_size=(hidden * 5 // 2 + 31) // 32 * 32, vocab_size=VOCAB)
    if release.chat != "minicpm" and isinstance(eos, list):
        cfg["eos_token_id"] = [2, 3]  # [</s>, <|im_end|>]
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("rope_type") == LONGROPE_TYPE:
        if not longrope:
            del cfg["rope_scaling"]
        else:
            half = hidden // heads // 2
            scaling["short_factor"] = [round(float(x), 6) for x in np.geomspace(1.0, 100.0, half)]
            scaling["long_factor"] = [round(float(x), 6) for x in np.geomspace(2.0, 20.0, half)]
    return cfg


def write_standin(name: str, out: Path, seed: int = 0, longrope: bool = LONGROPE) -> Path:
    release = RELEASES[name]
    out = Path(out) / name
    out.mkdir(parents=True)
    cfg = standin_config(release, longrope)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    weights = random_weights({**cfg, "tie_word_embeddings": release.tied}, seed)
    weights = {k: v.astype(DTYPES[cfg["torch_dtype"]]) for k, v in weights.items()}
    _write_weights(out, release.weights, weights)
    chatml = release.chat != "minicpm"
    (out / "tokenizer.model").write_bytes(train_tokenizer(VOCAB, seed, CHATML_PIECES if chatml else None))
    (out / "tokenizer.json").write_text(sentencepiece_to_tokenizer_json(out / "tokenizer.model"), encoding="utf-8")
    template = {"minicpm": CHAT_TEMPLATE, "chatml": CHATML_TEMPLATE, "chatml_hybrid_thinking": THINKING_TEMPLATE}
    tok_config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "legacy": True, "tokenizer_class": "LlamaTokenizer",
                  "chat_template": template[release.chat]}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False), encoding="utf-8")
    special = {"bos_token": "<s>", "eos_token": "<|im_end|>" if chatml else "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    gen = {"bos_token_id": 1, "eos_token_id": cfg["eos_token_id"], "do_sample": True, "temperature": 0.8,
           "top_p": 0.8}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    front = ["---", "language:", "- zh", "- en", "library_name: transformers", "pipeline_tag: text-generation"]
    if release.license:
        front.append(f"license: {release.license}")
    (out / "README.md").write_text("\n".join(front + ["---", f"# {name} (tiny stand-in)", ""]), encoding="utf-8")
    for f in ("configuration_minicpm.py", "modeling_minicpm.py"):
        (out / f).write_text("# remote code of the release: never run by mcpm-mobile\n")
    return out


def _write_weights(out: Path, layout: tuple[str, ...], weights: dict[str, np.ndarray]) -> None:
    pattern = layout[0]
    bin_format = pattern.endswith(".bin")
    writer = pytorch_bin.write if bin_format else safetensors_io.write
    if "*" not in pattern:
        writer(out / pattern, weights)
        return
    shards = int(pattern.split("-of-")[1].split(".")[0])
    names = list(weights)
    parts = np.array_split(np.arange(len(names)), shards)
    weight_map = {}
    for i, idx in enumerate(parts):
        fname = pattern.replace("0000*", f"{i + 1:05d}")
        writer(out / fname, {names[j]: weights[names[j]] for j in idx})
        weight_map.update({names[j]: fname for j in idx})
    index = layout[1]
    total = sum(a.nbytes for a in weights.values())
    (out / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
