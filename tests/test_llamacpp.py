"""Our GGUF files in llama.cpp itself (llama-cpp-python): logits against the independent numpy reference,
and llama.cpp's tokenization of chat prompts against ours (the `tokenizers` library on tokenizer.json)."""
import contextlib
import shutil

import llama_cpp
import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import edit_json
from gguf_weights import dequantized_hf_weights
from mcpm_mobile.formats.gguf_export import export_gguf
from mcpm_mobile.model.tiny import _corpus
from reference_numpy import ReferenceMiniCPM, read_hf_checkpoint

VARIANTS = ["mha_tied", "gqa_untied", "gqa_tied_f32", "mha_untied_sharded"]
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 5e-2, "q4_0": 5e-2}  # max |error| / max |reference logit|
PROMPT = "<用户>the model runs on a phone<AI>手机上运行的模型，Memory bandwidth decides.<用户>how fast is 2048 tokens?<AI>"
CHAT_PROMPTS = [
    PROMPT,
    "<用户>你好<AI>",
    "<用户> leading space<AI> reply with  two spaces\nand a newline<用户>\n<AI>",
    "<用户><AI><用户>",
    "plain text, no roles 123",
    "<用户>emoji 😀 and é<AI>",
]


@pytest.fixture(scope="module")
def gguf_file(tiny_dir, tmp_path_factory):
    """(checkpoint dir, type) -> our GGUF of it (made once)."""
    root = tmp_path_factory.mktemp("gguf")
    made = {}

    def get(src, type_):
        key = (str(src), type_)
        if key not in made:
            made[key] = export_gguf(src, root / f"{len(made)}-{type_}.gguf", type_)["output"]
        return made[key]

    return get


@pytest.fixture(scope="module")
def custom_scales(tiny_dir, tmp_path_factory):
    """mha_tied with scalings unlike llama.cpp's MiniCPM-2B defaults (12, 1.4/sqrt(L), 256/n_embd), which the
    standard tiny configs happen to equal for hidden 64: the scale keys must be read for this one to match."""
    src = tmp_path_factory.mktemp("scales") / "ckpt"
    shutil.copytree(tiny_dir("mha_tied"), src)
    edit_json(src / "config.json", scale_emb=10, scale_depth=1.0, dim_model_base=32)
    return src


@contextlib.contextmanager
def llama(path, **kwargs):
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, verbose=False, **kwargs)
    try:
        yield llm
    finally:
        llm.close()


def our_ids(src, text):
    """MLC's conv template: BOS, then the text tokenized by tokenizer.json without special tokens."""
    return [1] + Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def llama_logits(path, ids):
    with llama(path, logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) as llm:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], np.float64)


def _check_logits(src, path, type_):
    config, hf = read_hf_checkpoint(src)
    if type_ == "f32":
        weights = hf
    else:  # the reference runs on exactly the weights llama.cpp has
        weights = dequantized_hf_weights(path, config["num_attention_heads"],
                                         config.get("num_key_value_heads") or config["num_attention_heads"])
    ids = our_ids(src, PROMPT)
    ref = ReferenceMiniCPM(config, weights).logits(ids)
    got = llama_logits(path, ids)
    err = np.abs(got - ref).max()
    assert err / np.abs(ref).max() <= TOLERANCE[type_], f"relative error {err / np.abs(ref).max():.3g}"
    # argmax equal, up to near-ties that llama.cpp's int8 activations may flip: its choice must be within the
    # row's error of the reference maximum, and exactly the reference's at nearly every position
    rows = np.arange(len(ids))
    row_err = np.abs(got - ref).max(-1)
    assert (ref[rows, got.argmax(-1)] >= ref.max(-1) - 2 * row_err).all()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("type_", ["f32", "f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_numpy_reference(variant, type_, tiny_dir, gguf_file):
    src = tiny_dir(variant)
    _check_logits(src, gguf_file(src, type_), type_)


@pytest.mark.slow
@pytest.mark.parametrize("type_", ["f32", "q4_0"])
def test_scale_keys_are_used(custom_scales, gguf_file, type_):
    _check_logits(custom_scales, gguf_file(custom_scales, type_), type_)


def test_f32_gguf_weights_are_the_checkpoint(tiny_dir, gguf_file):
    src = tiny_dir("gqa_untied")
    config, hf = read_hf_checkpoint(src)
    ours = dequantized_hf_weights(gguf_file(src, "f32"), 4, 2)
    assert set(ours) == set(hf)
    for name, w in hf.items():
        assert np.array_equal(ours[name], w), name


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenization_equals_ours(variant, tiny_dir, gguf_file):
    src = tiny_dir(variant)
    texts = CHAT_PROMPTS + _corpus(11, 200)
    with llama(gguf_file(src, "q4_0"), vocab_only=True) as llm:
        assert (llm.token_bos(), llm.token_eos(), llm.n_vocab()) == (1, 2, len(Tokenizer.from_file(
            str(src / "tokenizer.json")).get_vocab()))
        for text in texts:
            ours = our_ids(src, text)
            # LLMFarm parses special tokens; <用户>/<AI> are user-defined, so llama.cpp splits them either way
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ours, text
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == ours, text
        ids = our_ids(src, PROMPT)[1:]
        assert llm.detokenize(ids).decode() == Tokenizer.from_file(str(src / "tokenizer.json")).decode(ids)


@pytest.mark.slow
def test_openbmb_flavor_loads_as_plain_llama(tiny_dir, tmp_path):
    """Upstream llama.cpp runs arch `llama` without MiniCPM's scalings (OpenBMB's fork hard-codes them), so the
    file must equal the reference with neutral scalings."""
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir("gqa_tied_f32"), src)
    edit_json(src / "config.json", scale_emb=12, scale_depth=1.4 * (3 / 40) ** 0.5, dim_model_base=128 / 9)
    path = export_gguf(src, tmp_path / "o.gguf", "f32", flavor="openbmb")["output"]
    config, hf = read_hf_checkpoint(src)
    config.update(scale_emb=1.0, scale_depth=config["num_hidden_layers"] ** 0.5, dim_model_base=config["hidden_size"])
    ids = our_ids(src, PROMPT)
    ref = ReferenceMiniCPM(config, hf).logits(ids)
    assert np.abs(llama_logits(path, ids) - ref).max() / np.abs(ref).max() <= TOLERANCE["f32"]
