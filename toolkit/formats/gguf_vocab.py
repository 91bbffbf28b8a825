"""The SentencePiece vocabulary as llama.cpp's ``llama`` (SPM) tokenizer reads it from GGUF keys.

Pieces, scores and types come from ``tokenizer.model``; tokens that ``tokenizer.json`` adds on top
(the HF semantics our own runtime uses) are marked so that llama.cpp splits them out of the text the
same way: special ones as CONTROL, the others as USER_DEFINED. Ids up to ``vocab_size`` that neither
file defines become unused ``[PADi]`` tokens, as llama.cpp's converter does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.model import chat_format
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.model.tokenizer import CONTROL, NORMAL, UNUSED, USER_DEFINED, load_sp_proto

ADDED_TOKEN_SCORE = -1000.0  # llama.cpp's converter scores added tokens like this
PAD_SCORE = -10000.0
SP_BPE = 2  # sentencepiece TrainerSpec.ModelType.BPE


@dataclass
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | None
    eot_id: int | None = None  # end of turn when it is not the eos (ChatML's <|im_end|>)


def read_vocab(model_dir: Path, config: MiniCPMConfig) -> Vocab:
    model_dir = Path(model_dir)
    sp_path = model_dir / "tokenizer.model"
    if not sp_path.is_file():
        raise fail(model_dir, "no tokenizer.model: GGUF export needs the SentencePiece model "
                              "(llama.cpp's 'llama' tokenizer is built from its pieces and scores)")
    proto = load_sp_proto(sp_path)
    if proto.trainer_spec.model_type != SP_BPE:
        raise fail(sp_path, "only SentencePiece BPE models (MiniCPM/Llama style) can be exported to GGUF")
    n = config.vocab_size
    if len(proto.pieces) > n:
        raise fail(sp_path, f"has {len(proto.pieces)} pieces but config.json vocab_size is {n}")
    pad = range(len(proto.pieces), n)
    tokens = [p.piece.encode("utf-8") for p in proto.pieces] + [f"[PAD{i}]".encode() for i in pad]
    scores = [float(p.score) for p in proto.pieces] + [PAD_SCORE] * len(pad)
    types = [int(p.type) for p in proto.pieces] + [UNUSED] * len(pad)
    for token_id, content, special in _added_tokens(model_dir):
        if token_id >= n:
            raise fail(model_dir / "tokenizer.json", f"added token {content!r} has id {token_id} >= vocab_size {n}")
        if token_id < len(proto.pieces):
            if tokens[token_id] != content.encode("utf-8"):
                raise fail(model_dir / "tokenizer.json", f"added token {content!r} (id {token_id}) differs from "
                                                         f"tokenizer.model's piece {proto.pieces[token_id].piece!r}")
            if types[token_id] != NORMAL:
                continue
        tokens[token_id] = content.encode("utf-8")
        types[token_id] = CONTROL if special else USER_DEFINED
        scores[token_id] = ADDED_TOKEN_SCORE

    tok_config = _read_json(model_dir / "tokenizer_config.json")
    spec = proto.trainer_spec
    bos, eos = config.bos_token_id, config.eos_token_ids[0]
    for what, i in (("bos_token_id", bos), ("eos_token_id", eos)):
        if not 0 <= i < n:
            raise fail(model_dir / "config.json", f"{what} {i} is outside the vocabulary (0..{n - 1})")
    return Vocab(
        tokens=tokens, scores=scores, types=types, bos_id=bos, eos_id=eos,
        unk_id=spec.unk_id if spec.unk_id >= 0 else None, pad_id=spec.pad_id if spec.pad_id >= 0 else None,
        add_bos=bool(tok_config.get("add_bos_token", True)), add_eos=bool(tok_config.get("add_eos_token", False)),
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        chat_template=_chat_template(tok_config), eot_id=chat_format.detect(model_dir, config).eot_token_id,
    )


def _added_tokens(model_dir: Path) -> list[tuple[int, str, bool]]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return []
    try:
        added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens") or []
        return [(int(t["id"]), str(t["content"]), bool(t.get("special"))) for t in added]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise fail(path, f"cannot read added_tokens: {e}")


def _chat_template(tok_config: dict) -> str | None:
    t = tok_config.get("chat_template")
    if isinstance(t, list):  # [{"name": ..., "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default")
    return t if isinstance(t, str) and t else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise fail(path, f"cannot read JSON: {e}")
    if not isinstance(data, dict):
        raise fail(path, "expected a JSON object")
    return data
