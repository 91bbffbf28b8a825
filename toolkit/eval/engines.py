"""The quantized side of ``eval``: each artifact run by the engine a phone would run it with.

Every engine takes our token ids (the checkpoint's tokenizer) and returns float32 logits at the scored
positions ``first .. T-2`` of one window. Creating an artifact is cheap (its tokenizer and vocabulary only),
so every path and tokenizer is checked before any evaluation runs; ``open()`` loads the model and ``close()``
frees it, one artifact at a time.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail


def _first_difference(a: list[int], b: list[int]) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at token {i}: {a[i:i + 3]} vs the checkpoint's {b[i:i + 3]}"


def _hf_tokenizer(path: Path):
    from tokenizers import Tokenizer

    if not path.is_file():
        raise fail(path, "not found (the artifact needs its tokenizer.json)")
    return Tokenizer.from_file(str(path))


class Artifact(ABC):
    """One quantized artifact under evaluation; each engine implements encode/open/window_logits."""

    label: str  # row name in the report
    kind: str  # what it is: format, type, engine
    path: Path
    vocab_size: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as this artifact's own tokenizer gives them."""

    def check_tokenizer(self, sample: str, ids: list[int], vocab_size: int) -> None:
        if self.vocab_size != vocab_size:
            raise fail(self.path, f"has a vocabulary of {self.vocab_size} tokens, the checkpoint {vocab_size}: "
                                  "not the same model")
        theirs = self.encode(sample)
        if theirs != ids:
            raise fail(self.path, "tokenizes the text differently from the checkpoint "
                                  f"({_first_difference(theirs, ids)})")

    @abstractmethod
    def open(self) -> None:
        """Load the engine (kept out of the timed evaluation)."""

    @abstractmethod
    def window_logits(self, window: list[int], first: int) -> np.ndarray:
        """Next-token logits for positions ``first``.. of ``window``."""

    def close(self) -> None:
        pass


class GGUFArtifact(Artifact):
    """A GGUF file in llama.cpp (llama-cpp-python) with ``llama-perplexity``'s defaults (f16 KV cache)."""

    def __init__(self, path: Path | str, context: int, threads: int):
        import gguf
        import llama_cpp

        self.path, self.context, self.threads = Path(path), context, threads
        if not self.path.is_file():
            raise fail(self.path, "GGUF file not found")
        try:
            field = gguf.GGUFReader(self.path).fields.get("general.file_type")
        except Exception as e:  # noqa: BLE001 - a foreign or broken file
            raise fail(self.path, f"not a GGUF file ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        ftype = int(field.contents()) if field is not None else None
        names = {int(v): v.name.removeprefix("MOSTLY_").removeprefix("ALL_").lower() for v in gguf.LlamaFileType}
        self.kind = f"GGUF {names.get(ftype, ftype)} in llama.cpp"
        self.label = f"gguf:{self.path.name}"
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's loader log, as verbose=False
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True  # the tokenizer alone, without a context
        self.vocab = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.vocab:
            raise fail(self.path, "llama.cpp cannot load its vocabulary")
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.vocab))
        self.llm = None

    def encode(self, text):
        import llama_cpp

        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(llama_cpp.llama_model_get_vocab(self.vocab), data, len(data), buf, len(buf),
                                     False, False)
        return list(buf[:n])

    def open(self):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(self.path), n_ctx=self.context, n_batch=self.context,
                                   n_ubatch=self.context, logits_all=True, n_threads=self.threads, verbose=False)

    def window_logits(self, window, first):
        self.llm.reset()
        self.llm.eval(window)
        return np.array(self.llm.scores[first:len(window) - 1], np.float32)

    def close(self):
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __del__(self):
        import llama_cpp

        if getattr(self, "vocab", None):
            llama_cpp.llama_model_free(self.vocab)
            self.vocab = None


class MLCArtifact(Artifact):
    """MLC weights and their compiled host library in TVM's Relax VM (our runtime, MLC's calling convention):
    the first half of a window as prefill, then one decode step per scored token, as the phone app runs."""

    def __init__(self, weights_dir: Path | str, lib: Path | str, context: int, threads: int):
        from mcpm_mobile.formats.weights import Weights

        self.path, self.lib, self.context, self.threads = Path(weights_dir), Path(lib), context, threads
        self.weights = Weights.read(self.path)
        if not self.lib.is_file():
            raise fail(self.lib, "model library not found")
        self.tokenizer = _hf_tokenizer(self.path / "tokenizer.json")
        self.kind = f"MLC {self.weights.quantization.name}, TVM host library"
        self.label = f"mlc:{self.path.name}"
        self.vocab_size = self.weights.config.vocab_size
        self.engine = None

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def open(self):
        from mcpm_mobile.runtime.engine import Engine

        self.engine = Engine(self.weights, self.lib, threads=self.threads)
        if self.engine.context_window < self.context:
            raise fail(self.lib, f"was compiled for a context window of {self.engine.context_window} tokens; the "
                                 f"evaluation windows have {self.context} (use --context "
                                 f"{self.engine.context_window} or recompile with a larger --context-window)")

    def window_logits(self, window, first):
        e = self.engine
        e.reset()
        rows = [e.prefill([int(t) for t in window[:first + 1]])]
        rows += [e.decode(int(t)) for t in window[first + 1:len(window) - 1]]
        return np.stack(rows).astype(np.float32)

    def close(self):
        self.engine = None


class ONNXArtifact(Artifact):
    """An ``export-onnx`` directory in onnxruntime: each window in one run from an empty KV cache."""

    def __init__(self, out_dir: Path | str, context: int, threads: int):
        from mcpm_mobile.support.jsonio import read_json

        self.path, self.threads = Path(out_dir), threads
        for name in ("model.onnx", "genai_config.json"):
            if not (self.path / name).is_file():
                raise fail(self.path, f"{name} not found (not an `mcpm-mobile export-onnx` directory)")
        genai = read_json(self.path / "genai_config.json")["model"]
        if genai["context_length"] < context:
            raise fail(self.path, f"was exported for a context of {genai['context_length']} tokens; the evaluation "
                                  f"windows have {context}")
        self.tokenizer = _hf_tokenizer(self.path / "tokenizer.json")
        dec = genai["decoder"]
        self.layers, self.kv_heads = dec["num_hidden_layers"], dec["num_key_value_heads"]
        self.head_dim = dec["head_size"]
        self.vocab_size = genai["vocab_size"]
        self.kind = "ONNX INT4 (MatMulNBits) in onnxruntime"
        self.label = f"onnx:{self.path.name}"
        self.session = None

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def open(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.path / "model.onnx"), so, providers=["CPUExecutionProvider"])

    def window_logits(self, window, first):
        T = len(window)
        past = {f"past_key_values.{i}.{t}": np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
                for i in range(self.layers) for t in ("key", "value")}
        logits = self.session.run(["logits"], {"input_ids": np.asarray([window], np.int64),
                                               "attention_mask": np.ones((1, T), np.int64), **past})[0]
        return logits[0, first:T - 1].astype(np.float32)

    def close(self):
        self.session = None
