"""``mlc-chat-config.json``: what MLC's runtime and apps read next to the weights."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.model.chat_format import MINICPM, ChatFormat
from mcpm_mobile.model.config import MiniCPMConfig

FILENAME = "mlc-chat-config.json"
VERSION = "0.1.0"
MODEL_TYPE = "minicpm"
DEFAULT_CONTEXT = 2048
DEFAULT_PREFILL_CHUNK = 128
SYSTEM_DEFAULTS = {"temperature": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                   "repetition_penalty": 1.0, "top_p": 1.0}
REQUIRED = ("model_type", "quantization", "model_config", "vocab_size", "context_window_size", "prefill_chunk_size",
            "conv_template", "tokenizer_files")


def conv_template(config: MiniCPMConfig, fmt: ChatFormat | None = None) -> dict:
    """The checkpoint's chat format as an MLC Conversation object (BOS via prefix ids); without ``fmt``,
    MiniCPM 1.x's ``<用户>{prompt}<AI>``."""
    fmt = fmt or ChatFormat(MINICPM, config.bos_token_id, tuple(config.eos_token_ids))
    return fmt.mlc_conv_template()


def build(config: MiniCPMConfig, quantization: str, tokenizer_files: list[str], tokenizer_info: dict,
          generation: dict | None = None, context_window: int | None = None, prefill_chunk: int | None = None,
          active_vocab_size: int | None = None, chat_format: ChatFormat | None = None) -> dict:
    ctx = context_window or min(config.max_position_embeddings, DEFAULT_CONTEXT)
    if ctx > config.max_position_embeddings:
        raise MCPMError(f"context window {ctx} exceeds the model's max_position_embeddings "
                        f"({config.max_position_embeddings})")
    chunk = min(prefill_chunk or DEFAULT_PREFILL_CHUNK, ctx)
    model_config = config.to_dict()
    model_config.update(context_window_size=ctx, prefill_chunk_size=chunk, tensor_parallel_shards=1,
                        max_batch_size=1, num_experts=0, num_experts_per_tok=0)
    gen = dict(SYSTEM_DEFAULTS)
    for key in SYSTEM_DEFAULTS:
        if generation and isinstance(generation.get(key), (int, float)):
            gen[key] = float(generation[key])
    return {
        "version": VERSION, "model_type": MODEL_TYPE, "quantization": quantization, "model_config": model_config,
        "vocab_size": config.vocab_size, "context_window_size": ctx, "sliding_window_size": -1,
        "prefill_chunk_size": chunk, "attention_sink_size": -1, "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1, "active_vocab_size": active_vocab_size, **gen,
        "tokenizer_files": tokenizer_files, "tokenizer_info": tokenizer_info, "conv_template": conv_template(config, chat_format),
        "pad_token_id": 0, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "model_task": "chat", "embedding_metadata": None,
    }


def read(weights_dir: Path) -> dict:
    """The chat config of a weights directory; it must at least say the quantization and model config."""
    path = Path(weights_dir) / FILENAME
    if not path.is_file():
        raise fail(path, "not found (is this an mcpm-mobile/MLC weights directory?)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise fail(path, f"cannot read: {e}")
    if not isinstance(cfg, dict):
        raise fail(path, "expected a JSON object")
    check_fields(cfg, path, ("quantization", "model_config"))
    return cfg


def check_fields(cfg: dict, path: Path, required: tuple[str, ...] = REQUIRED) -> None:
    """Every field MLC's runtime requires is there (``required``: a subset to check)."""
    missing = [k for k in required if k not in cfg]
    if missing:
        raise fail(path, f"missing required field(s): {', '.join(missing)}")
