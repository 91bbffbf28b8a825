"""Tokenizer files: SentencePiece -> ``tokenizer.json`` conversion and the files a runtime needs.

MLC's Android runtime is built without SentencePiece, so ``tokenizer.json`` must always be shipped.
The conversion builds the Llama-style fast tokenizer that Hugging Face ships for MiniCPM: a BPE
model with byte fallback, normalizer ``Prepend("▁") + Replace(" ", "▁")`` and the matching decoder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.support.paths import regular_file

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "special_tokens_map.json")
SPIECE_UNDERLINE = "▁"
# sentencepiece ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def load_sp_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError type
        raise fail(path, f"not a SentencePiece model: {e}")
    if not proto.pieces:
        raise fail(path, "SentencePiece model has no pieces")
    return proto


def sentencepiece_to_tokenizer_json(sp_model: Path, add_bos: bool = True) -> str:
    """Convert a SentencePiece BPE model to the text of an HF ``tokenizer.json``."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    proto = load_sp_proto(sp_model)
    if proto.trainer_spec.model_type != 2:  # 2 == BPE
        raise fail(sp_model, "only SentencePiece BPE models (Llama/MiniCPM style) can be converted")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    unk = next((p.piece for p in proto.pieces if p.type == UNKNOWN), None)
    tok = Tokenizer(BPE(vocab, _merges(proto, vocab), unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE), normalizers.Replace(" ", SPIECE_UNDERLINE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                            for p in proto.pieces if p.type in (UNKNOWN, CONTROL)])
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=False)
                    for p in proto.pieces if p.type == USER_DEFINED])
    bos_id = proto.trainer_spec.bos_id
    if add_bos and bos_id >= 0:
        bos = proto.pieces[bos_id].piece
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    return tok.to_str(pretty=True)


def _merges(proto, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges recovered from the vocabulary: every split of a piece into two known pieces,
    ranked by the merged piece's id (SentencePiece orders BPE pieces by merge order)."""
    found = []
    for piece, rank in vocab.items():
        if proto.pieces[rank].type != NORMAL or len(piece) < 2:
            continue
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                found.append((rank, vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def copy_tokenizer_files(src: Path, dst: Path, vocab_size: int | None = None) -> list[str]:
    """Copy the tokenizer files a runtime needs; create ``tokenizer.json`` from ``tokenizer.model`` if absent.

    With ``vocab_size`` (the model's), a token id the embedding has no row for is refused."""
    src, dst = Path(src), Path(dst)
    copied = []
    for name in TOKENIZER_FILES:
        if regular_file(src, src / name):
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        if "tokenizer.model" not in copied:
            raise fail(src, "no tokenizer.json or tokenizer.model found")
        (dst / "tokenizer.json").write_text(sentencepiece_to_tokenizer_json(src / "tokenizer.model"), encoding="utf-8")
        copied.append("tokenizer.json")
    _check_tokenizer_json(dst / "tokenizer.json", src, vocab_size)
    return copied


def _check_tokenizer_json(path: Path, src: Path, vocab_size: int | None = None) -> None:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception
        raise fail(src / "tokenizer.json", f"cannot be loaded by tokenizers: {str(e).splitlines()[0][:120]}")
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if vocab_size is not None and top >= vocab_size:
        raise fail(src / "tokenizer.json", f"has token id {top}, outside the model's vocabulary (vocab_size "
                                           f"{vocab_size} in config.json): the tokenizer is not this model's")
    added = [t["content"] for t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])]
    if len(added) != len(set(added)):
        raise fail(src / "tokenizer.json", "has duplicated added_tokens (MLC's runtime rejects it)")


def tokenizer_info(tokenizer_json: Path) -> dict:
    """MLC's ``tokenizer_info``, detected from ``tokenizer.json`` with the runtime's own rules."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    text = json.dumps([spec.get("decoder"), spec.get("normalizer"), spec.get("pre_tokenizer")], ensure_ascii=False)
    byte_level = '"ByteLevel"' in text
    return {
        "token_postproc_method": "byte_level" if byte_level else "byte_fallback",
        "prepend_space_in_encode": '"Prepend"' in text and SPIECE_UNDERLINE in text,
        "strip_space_in_decode": '"Strip"' in text,
    }
