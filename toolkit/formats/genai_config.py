"""``genai_config.json``: what onnxruntime-genai reads next to ``model.onnx`` (its builder's layout).

The graph is a plain decoder-only model, so it is declared as onnxruntime-genai's ``llama`` type:
inputs ``input_ids``/``attention_mask``/``past_key_values.%d.{key,value}``, outputs ``logits`` and
``present.%d.{key,value}``, rotary embedding inside ``GroupQueryAttention`` (no ``position_ids``),
past and present sharing one buffer as the builder writes for GroupQueryAttention.
"""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.model.config import MiniCPMConfig

FILENAME = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_TYPE = "llama"
SEARCH_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}


def build(config: MiniCPMConfig, model_file: str, context_length: int, max_length: int,
          generation: dict | None = None, stop_token_ids: list[int] | None = None) -> dict:
    """``context_length``: positions the graph supports; ``max_length``: the KV buffer onnxruntime-genai allocates;
    ``stop_token_ids``: every token that ends a turn (all eos ids, ChatML's <|im_end|>), default the config's eos."""
    search = dict(SEARCH_DEFAULTS)
    for key, default in SEARCH_DEFAULTS.items():
        value = (generation or {}).get(key)
        if isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)
                                                and not isinstance(value, bool)):
            search[key] = value
    eos = list(stop_token_ids or config.eos_token_ids)
    return {
        "model": {
            "bos_token_id": config.bos_token_id,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": config.head_dim,
                "hidden_size": config.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": config.num_attention_heads,
                "num_hidden_layers": config.num_hidden_layers,
                "num_key_value_heads": config.num_key_value_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": eos[0],
            "type": MODEL_TYPE,
            "vocab_size": config.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "early_stopping": True, "length_penalty": 1.0, "max_length": max_length,
            "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1,
            "past_present_share_buffer": True, **search,
        },
    }


def ensure_tokenizer_config(out_dir: Path, config: MiniCPMConfig) -> bool:
    """onnxruntime-genai's tokenizer needs ``tokenizer_config.json``; write MiniCPM's minimal one if absent.

    Returns True when it was written."""
    from tokenizers import Tokenizer

    path = Path(out_dir) / TOKENIZER_CONFIG
    if path.is_file():
        return False
    tok_path = Path(out_dir) / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    tokens = {"bos_token": tok.id_to_token(config.bos_token_id), "eos_token": tok.id_to_token(config.eos_token_ids[0]),
              "unk_token": (json.loads(tok_path.read_text(encoding="utf-8")).get("model") or {}).get("unk_token")}
    path.write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        **{k: v for k, v in tokens.items() if v is not None}, "model_max_length": config.max_position_embeddings,
    }, indent=2, ensure_ascii=False), encoding="utf-8")
    return True
