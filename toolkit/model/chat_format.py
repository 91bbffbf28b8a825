"""The chat format a checkpoint declares, read from its own files and written into every artifact.

MiniCPM releases use one of two formats (docs/checkpoints.md says which release uses which):
- ``minicpm``: MiniCPM 1.x's ``<用户>{prompt}<AI>`` (MiniCPM-1B/2B sft/dpo);
- ``chatml``: ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`` (MiniCPM-2B-128k, MiniCPM4,
  MiniCPM4.1). MiniCPM4.1's template also takes ``enable_thinking``: thinking is on unless it is false, and
  off means the generation prompt ends with an empty ``<think>\\n\\n</think>\\n\\n`` block.

The format is recognised from ``tokenizer_config.json``'s ``chat_template``; with no template the model is
MiniCPM 1.x's. Stop tokens are every ``eos_token_id`` of ``config.json`` and ``generation_config.json``, plus
``<|im_end|>`` for ChatML.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.model.config import MiniCPMConfig

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
USER_1X, AI_1X = "<用户>", "<AI>"
THINKING_OFF_PREFIX = "<think>\n\n</think>\n\n"
THINKING_SWITCH = "enable_thinking"
# MLC conv_template names: the engine (and `run --thinking`) tells the formats apart by them
MINICPM, CHATML, CHATML_THINKING = "minicpm", "chatml", "chatml_hybrid_thinking"


@dataclass(frozen=True)
class ChatFormat:
    name: str  # MINICPM, CHATML or CHATML_THINKING
    bos_token_id: int
    stop_token_ids: tuple[int, ...]
    thinking: bool | None = None  # None: the template has no thinking switch
    source: str = ""  # the file the format was read from, for messages

    @property
    def chatml(self) -> bool:
        return self.name != MINICPM

    @property
    def stop_strings(self) -> list[str]:
        return [IM_END] if self.chatml else [USER_1X]

    @property
    def eot_token_id(self) -> int | None:
        """The end-of-turn token when it is not the first eos (ChatML's ``<|im_end|>``)."""
        return self.stop_token_ids[-1] if self.chatml and len(self.stop_token_ids) > 1 else None

    def with_thinking(self, thinking: bool | None) -> "ChatFormat":
        """This format with thinking switched on/off; None keeps the default. Refused where there is no switch."""
        if thinking is None:
            return self
        if self.thinking is None:
            raise fail(self.source or "chat template", "the chat template has no thinking mode "
                       f"(no '{THINKING_SWITCH}'); --thinking/--no-thinking apply to MiniCPM4.1-style templates")
        return replace(self, thinking=thinking)

    @property
    def assistant_prefix(self) -> str:
        """What follows the user's turn so the model answers (the generation prompt)."""
        if not self.chatml:
            return AI_1X
        return f"{IM_START}assistant\n" + ("" if self.thinking in (None, True) else THINKING_OFF_PREFIX)

    def render(self, messages: list[tuple[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text (without BOS) for ``[(role, text), ...]``, as the checkpoint's template renders it."""
        out = ""
        for role, text in messages:
            if self.chatml:
                out += f"{IM_START}{role}\n{text}{IM_END}\n"
            elif role == "user":
                out += USER_1X + text.strip() + AI_1X
            elif role == "assistant":
                out += text.strip()
            else:
                out += text
        return out + (self.assistant_prefix if add_generation_prompt and self.chatml else "")

    # --- what each artifact carries ----------------------------------------------------------------
    def mlc_conv_template(self) -> dict:
        """An MLC ``Conversation`` object (mlc_llm/protocol/conversation_protocol.py field names)."""
        common = {
            "name": self.name, "system_template": "{system_message}", "system_message": "",
            "system_prefix_token_ids": [self.bos_token_id], "add_role_after_system_message": True,
            "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}"},
            "messages": [], "stop_str": self.stop_strings, "stop_token_ids": list(self.stop_token_ids),
            "function_string": "", "use_function_calling": False,
        }
        if not self.chatml:
            return {**common, "roles": {"user": USER_1X, "assistant": AI_1X}, "seps": [""],
                    "role_content_sep": "", "role_empty_sep": "", "strip_reasoning_in_history": False}
        # as mlc-llm's ChatML templates (conversation_template/hermes.py, qwen3.py); an empty system message
        # renders nothing, like the checkpoint's template when no system turn is given
        return {**common, "roles": {"user": f"{IM_START}user", "assistant": f"{IM_START}assistant"},
                "seps": [f"{IM_END}\n"], "role_content_sep": "\n",
                "role_empty_sep": "\n" + ("" if self.thinking in (None, True) else THINKING_OFF_PREFIX),
                "strip_reasoning_in_history": self.thinking is not None}

    def llmfarm_prompt_format(self) -> str:
        """LLMFarm's ``prompt_format`` (``{{prompt}}`` is the user's message)."""
        if not self.chatml:
            return USER_1X + "{{prompt}}" + AI_1X
        return f"{IM_START}user\n{{{{prompt}}}}{IM_END}\n" + self.assistant_prefix

    def llmfarm_reverse_prompt(self) -> str:
        return ",".join(self.stop_strings)


def from_conv_template(conv: dict, thinking: bool | None = None) -> ChatFormat:
    """The format an mlc-chat-config.json's ``conv_template`` was written for (used by ``run``)."""
    name = conv.get("name") if isinstance(conv, dict) else None
    if name not in (MINICPM, CHATML, CHATML_THINKING):
        name = CHATML if IM_START in json.dumps(conv, ensure_ascii=False) else MINICPM
    prefix = conv.get("system_prefix_token_ids") or [1]
    default = None
    if name == CHATML_THINKING:
        default = not str(conv.get("role_empty_sep", "")).endswith(THINKING_OFF_PREFIX)
    fmt = ChatFormat(name, int(prefix[0]), tuple(int(i) for i in conv.get("stop_token_ids") or []), default,
                     "mlc-chat-config.json conv_template")
    return fmt.with_thinking(thinking)


def detect(model_dir: Path, config: MiniCPMConfig, thinking: bool | None = None) -> ChatFormat:
    """Read the chat format of the checkpoint in ``model_dir``."""
    model_dir = Path(model_dir)
    tok_config_path = model_dir / "tokenizer_config.json"
    template = chat_template(_read(tok_config_path))
    gen = _read(model_dir / "generation_config.json")
    stops = list(config.eos_token_ids)
    gen_eos = gen.get("eos_token_id")
    for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if isinstance(i, int) and not isinstance(i, bool) and i not in stops:
            stops.append(i)
    if template is None or (USER_1X in template and IM_START not in template):
        return ChatFormat(MINICPM, config.bos_token_id, tuple(stops), None,
                          str(tok_config_path)).with_thinking(thinking)
    if IM_START not in template or IM_END not in template:
        raise fail(tok_config_path, "chat_template is neither ChatML (<|im_start|>/<|im_end|>) nor MiniCPM 1.x's "
                                    "<用户>/<AI>; mcpm-mobile cannot carry it into the MLC and LLMFarm packages")
    im_end = token_id(model_dir, IM_END)
    if im_end is None:
        raise fail(model_dir / "tokenizer.json", f"the chat template uses {IM_END} but the tokenizer has no such token")
    if im_end not in stops:
        stops.append(im_end)
    # <|im_end|> last, so eot_token_id finds it even when it is also an eos
    stops = [i for i in stops if i != im_end] + [im_end]
    has_switch = THINKING_SWITCH in template
    return ChatFormat(CHATML_THINKING if has_switch else CHATML, config.bos_token_id, tuple(stops),
                      True if has_switch else None, str(tok_config_path)).with_thinking(thinking)


def chat_template(tok_config: dict) -> str | None:
    """``chat_template`` as a string (a list of named templates gives its ``default``)."""
    t = tok_config.get("chat_template")
    if isinstance(t, list):
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default")
    return t if isinstance(t, str) and t else None


def token_id(model_dir: Path, content: str) -> int | None:
    """The id of ``content`` in ``tokenizer.json`` (its added tokens, then its vocabulary)."""
    path = Path(model_dir) / "tokenizer.json"
    data = _read(path)
    for t in data.get("added_tokens") or []:
        if isinstance(t, dict) and t.get("content") == content and isinstance(t.get("id"), int):
            return t["id"]
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and isinstance(vocab.get(content), int):
        return vocab[content]
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        for i, entry in enumerate(vocab):
            if isinstance(entry, list) and entry and entry[0] == content:
                return i
    return None


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise fail(path, f"cannot read JSON: {type(e).__name__}")
    return data if isinstance(data, dict) else {}
