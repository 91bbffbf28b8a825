"""LLMFarm (iOS) chat settings and a model-settings template for a MiniCPM GGUF file.

LLMFarm keeps everything under its Documents folder: ``models/<file>.gguf``, ``chats/*.json`` (one
chat each; ``model`` is the file name in ``models/``) and ``model_setting_templates/*.json``.
The app reads ints with ``as! Int32``, bools with ``as! Bool`` and some floats with ``as! Float``;
a JSON double such as 0.95 does not bridge to Float, so every float is written float32-exact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.model.chat_format import MINICPM, ChatFormat
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.support.atomic import JSON, atomic_file, check_output_file

CHATS_DIR = "chats"
TEMPLATES_DIR = "model_setting_templates"
# LLMFarm ignores tokenizer.chat_template: prompt_format and reverse_prompt (comma-separated; EOS stops
# generation on its own) come from the checkpoint's chat format (model/chat_format.py)
SAMPLING = {  # suggestions (MiniCPM publishes no official values for llama.cpp)
    "temp": 0.7, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1.02, "repeat_last_n": 64, "tfs_z": 1.0,
    "typical_p": 1.0, "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
}
INT_KEYS = {"context", "n_batch", "n_predict", "numberOfThreads", "top_k", "repeat_last_n", "mirostat"}
# LLMFarm leaves these out of a template (Helpers.swift exclude_from_settings_template_keys).
CHAT_ONLY_KEYS = ("lora_adapters", "model", "clip_model", "title", "icon", "model_settings_template", "chat_style")


def float32_exact(x: float) -> float:
    """The double nearest to ``x`` that is a float32, so Swift's NSNumber bridges it to Float."""
    return float(np.float32(x))


def chat_settings(model_file_name: str, config: MiniCPMConfig, context: int = 2048, name: str = "MiniCPM",
                  n_batch: int = 512, sampling: dict | None = None, use_metal: bool = True,
                  chat_format: ChatFormat | None = None) -> dict:
    """The chat JSON LLMFarm writes for a chat, for ``models/<model_file_name>``."""
    _check_name(name)
    fmt = chat_format or ChatFormat(MINICPM, config.bos_token_id, tuple(config.eos_token_ids))
    if Path(model_file_name).name != model_file_name or not model_file_name.endswith(".gguf"):
        raise fail(model_file_name, "expected a bare .gguf file name (LLMFarm resolves it in Documents/models/)")
    if not 16 <= context <= config.max_position_embeddings:
        raise fail("context", f"{context} is outside 16..{config.max_position_embeddings} "
                              "(the model's max_position_embeddings)")
    if n_batch < 1:
        raise fail("n_batch", f"{n_batch} must be at least 1")
    unknown = set(sampling or {}) - set(SAMPLING)
    if unknown:
        raise fail("sampling", f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(SAMPLING)})")
    settings = {
        "title": name, "icon": "ava0", "model": model_file_name, "model_inference": "llama",
        "model_settings_template": name, "prompt_format": fmt.llmfarm_prompt_format(),
        "reverse_prompt": fmt.llmfarm_reverse_prompt(), "skip_tokens": "",
        "warm_prompt": "\n\n\n", "context": context, "n_batch": n_batch, "n_predict": 0, "numberOfThreads": 0,
        **SAMPLING, **(sampling or {}),
        "grammar": "<None>", "use_metal": use_metal, "use_clip_metal": False, "mlock": False, "mmap": True,
        "flash_attn": False, "add_bos_token": True, "add_eos_token": False, "parse_special_tokens": True,
        "save_load_state": True, "chat_style": "DocC", "lora_adapters": [],
    }
    return {k: _typed(k, v) for k, v in settings.items()}


def template_settings(chat: dict) -> dict:
    """The model-settings template for ``chat``: LLMFarm's template keys plus ``template_name``."""
    template = {k: v for k, v in chat.items() if k not in CHAT_ONLY_KEYS}
    template["template_name"] = chat["model_settings_template"]
    return template


def write_settings(dest_dir: Path, model_file_name: str, config: MiniCPMConfig, context: int = 2048,
                   name: str = "MiniCPM", n_batch: int = 512, sampling: dict | None = None,
                   use_metal: bool = True, chat_format: ChatFormat | None = None, force: bool = False) -> list[Path]:
    """Write ``chats/<name>.json`` and ``model_setting_templates/<name>.json`` under ``dest_dir``
    (LLMFarm's Documents layout). Existing settings are replaced only with ``force``. Returns the two paths."""
    chat = chat_settings(model_file_name, config, context, name, n_batch, sampling, use_metal, chat_format)
    paths = check_settings_paths(dest_dir, name, force)
    for path, data in zip(paths, (chat, template_settings(chat))):
        with atomic_file(path, force, JSON) as tmp:
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return paths


def check_settings_paths(dest_dir: Path, name: str = "MiniCPM", force: bool = False) -> list[Path]:
    """The two settings files under ``dest_dir``, refused if they exist (without ``force``) or are not ours."""
    paths = [Path(dest_dir) / sub / f"{name}.json" for sub in (CHATS_DIR, TEMPLATES_DIR)]
    for path in paths:
        check_output_file(path, force, JSON)
    return paths


def _typed(key: str, value):
    if key not in SAMPLING and key not in INT_KEYS:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"{value!r} must be a finite number")
    if key in INT_KEYS:
        if int(value) != value:
            raise fail(key, f"{value!r} must be an integer")
        return int(value)
    return float32_exact(value)


def _check_name(name: str) -> None:
    if not name or Path(name).name != name or name.startswith("."):
        raise fail("name", f"{name!r} must be a plain file name (it names chats/<name>.json)")
