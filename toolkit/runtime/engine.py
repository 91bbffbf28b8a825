"""Run a compiled model library on the host through TVM's Relax VM, the way MLC's runtime does.

Weights come from TVM's own tensor-cache loader (``vm.builtin.tensor_cache.load`` +
``param_array_from_cache_by_name`` in ``_metadata.params`` order); the KV cache is the library's
``create_tir_paged_kv_cache`` driven by the ``vm.builtin.kv_state_*`` builtins.

    engine = Engine(Weights.read("dist/minicpm-q4f16_1"), ModelLibrary.read("dist/minicpm-q4f16_1-host.so"))
    result = engine.generate("Hello", max_tokens=32, on_text=print)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mcpm_mobile.compiler.library import ModelLibrary
from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.formats.tensor_cache import check_shards
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.runtime.sampling import SamplingParams, apply_repetition_penalty, sample_from_probs
from mcpm_mobile.support.elf import check_library_file

PAGE_SIZE = 16


@dataclass
class Timings:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tokens_per_s"] = round(self.prefill_tokens_per_s, 3)
        d["decode_tokens_per_s"] = round(self.decode_tokens_per_s, 3)
        return d


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "context"
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "prompt_token_ids": self.prompt_token_ids,
                "finish_reason": self.finish_reason, "timings": self.timings.to_dict()}


class Engine:
    """One sequence at a time (``Engine(weights, library).generate(...)``), on the host CPU or, with
    ``device="opencl"``, on an OpenCL device through our OpenCL runtime (``runtime/opencl``) for a
    library compiled for an OpenCL target with an x86-64 host.

    ``threads``: TVM's thread pool size (default: every core; TVM's own default is half of them).
    ``system_lib_prefix``: ``library`` is a shared object that links a system library registered
    under this prefix (loaded as ``system://<prefix>``, as phone apps load their static archive).
    """

    def __init__(self, weights: Weights | Path | str, library: ModelLibrary | Path | str, threads: int | None = None,
                 device: str = "cpu", system_lib_prefix: str | None = None):
        import tvm
        import tvm_ffi
        from tvm import relax

        self.weights = Weights.of(weights)
        self.lib_path = library.path if isinstance(library, ModelLibrary) else Path(library)
        if not self.lib_path.is_file():
            raise fail(self.lib_path, "model library not found (compile one for these weights with "
                                      "`mcpm-mobile compile`)")
        check_shards(self.weights.dir, self.weights.require_index())  # TVM's loader trusts every offset
        check_library_file(self.lib_path)
        self._shape = tvm_ffi.Shape
        if device == "opencl":
            from mcpm_mobile.runtime import opencl

            opencl.device_name()  # builds and loads the device, or says why there is none
        elif device != "cpu":
            raise MCPMError(f"unknown device '{device}' (cpu or opencl)")
        self.dev = tvm.device(device)
        # CPU logits go to numpy without a copy (the VM allocates fresh logits per call); numpy cannot take others
        self._host_logits = self.dev.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        # TVM sizes its pool and every parallel launch by TVM_NUM_THREADS; without it a launch asks
        # hardware_concurrency() (a sysfs read) and halves it on x86, whatever config_threadpool was told
        n = threads or int(os.environ.get("TVM_NUM_THREADS") or 0) or os.cpu_count() or 1
        os.environ["TVM_NUM_THREADS"] = str(n)
        tvm.get_global_func("runtime.config_threadpool")(1, n)
        try:
            self.vm = relax.VirtualMachine(self._load_library(system_lib_prefix), self.dev)
            self.metadata = json.loads(str(self.vm["_metadata"]()))
        except MCPMError:
            raise
        except Exception as e:  # noqa: BLE001 - a foreign or broken file
            raise fail(self.lib_path, f"not an mcpm-mobile/MLC model library: {str(e).splitlines()[0]}")
        self.weights.check_library(self.metadata, self.lib_path)
        self.context_window = int(self.metadata["context_window_size"])
        self.prefill_chunk = int(self.metadata["prefill_chunk_size"])
        self.hidden = self.weights.config.hidden_size
        self._f = {name: self.vm[name] for name in ("embed", "prefill", "decode", "create_tir_paged_kv_cache",
                                                     "softmax_with_temperature")}
        g = tvm.get_global_func
        self._begin, self._end = g("vm.builtin.kv_state_begin_forward"), g("vm.builtin.kv_state_end_forward")
        self._add_seq = g("vm.builtin.kv_state_add_sequence")
        self._seq_len = g("vm.builtin.attention_kv_cache_get_total_sequence_length")
        self._reshape = g("vm.builtin.reshape")
        names = [p["name"] for p in self.metadata["params"]]
        g("vm.builtin.tensor_cache.load")(str(self.weights.dir), self.dev.dlpack_device_type(), self.dev.index)
        self.params = g("vm.builtin.param_array_from_cache_by_name")(names)
        g("vm.builtin.tensor_cache.clear")()
        self._one = tvm.runtime.tensor(np.zeros(1, dtype=np.int32), self.dev)
        self.kv = None
        self.history: list[int] = []  # tokens in the KV cache
        self._load_tokenizer()

    def _load_library(self, system_lib_prefix: str | None):
        """The library module: a shared library, or (with a prefix) a shared object linking a system
        library, found as ``system://<prefix>`` the way phone apps load their static archive."""
        import ctypes

        import tvm

        if system_lib_prefix is None:
            return tvm.runtime.load_module(str(self.lib_path))
        ctypes.CDLL(str(self.lib_path.resolve()), mode=ctypes.RTLD_GLOBAL)
        return tvm.runtime.system_lib(system_lib_prefix)

    # --- tokenizer and chat template ----------------------------------------------------------
    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer

        path = self.weights.dir / "tokenizer.json"
        if not path.is_file():
            raise fail(path, "not found (the weights directory needs tokenizer.json)")
        self.tokenizer = Tokenizer.from_file(str(path))
        conv = self.weights.chat_config.get("conv_template") or {}
        self.conv = conv if isinstance(conv, dict) else {}
        stops = set(self.conv.get("stop_token_ids") or []) | set(self.weights.config.eos_token_ids)
        self.stop_token_ids = sorted(stops)
        self.stop_strings = list(self.conv.get("stop_str") or [])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def chat_prompt_ids(self, prompt: str, first_turn: bool = True) -> list[int]:
        """The checkpoint's template from ``conv_template`` (``[BOS]<用户>{prompt}<AI>``, ChatML, ...). A later turn
        first closes the previous answer with the assistant separator (ChatML's ``<|im_end|>\n``): the stop token
        that ended it never entered the KV cache."""
        c = self.conv
        roles = c.get("roles") or {"user": "<用户>", "assistant": "<AI>"}
        seps = c.get("seps") or [""]
        text = ""
        if first_turn:
            text += (c.get("system_template") or "{system_message}").replace(
                "{system_message}", c.get("system_message") or "")
        else:
            text += seps[-1]
        user = (c.get("role_templates") or {}).get("user", "{user_message}").replace("{user_message}", prompt)
        text += roles["user"] + c.get("role_content_sep", "") + user + seps[0]
        text += roles["assistant"] + c.get("role_empty_sep", "")
        prefix = list(c.get("system_prefix_token_ids") or []) if first_turn else []
        return prefix + self.encode(text)

    # --- low level: the KV cache and the model functions --------------------------------------
    def reset(self) -> None:
        """Start a new sequence (frees the KV cache)."""
        S = self._shape
        self.kv = self._f["create_tir_paged_kv_cache"](S([1]), S([self.context_window]), S([self.prefill_chunk]),
                                                       S([PAGE_SIZE]), S([0]))
        self._add_seq(self.kv, 0)
        self.history = []

    def _check_room(self, n: int) -> None:
        if len(self.history) + n > self.context_window:
            raise MCPMError(f"the sequence would need {len(self.history) + n} tokens but the library's context "
                            f"window is {self.context_window} (compile the library with a larger context window, or "
                            "shorten the prompt)")

    def _embed(self, ids: list[int]):
        import tvm

        if len(ids) == 1:  # decode: refill one tensor (a new one costs ~0.05 ms a token)
            self._one.copyfrom(np.asarray(ids, dtype=np.int32))
            arr = self._one
        else:
            arr = tvm.runtime.tensor(np.asarray(ids, dtype=np.int32), self.dev)
        emb = self._f["embed"](arr, self.params)
        return self._reshape(emb, self._shape([1, len(ids), self.hidden]))

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Append ``ids`` (in chunks of at most prefill_chunk_size); float32 logits of the last one."""
        if not ids:
            raise MCPMError("cannot prefill an empty token list")
        if self.kv is None:
            self.reset()
        self._check_room(len(ids))
        logits = None
        for start in range(0, len(ids), self.prefill_chunk):
            chunk = ids[start:start + self.prefill_chunk]
            emb = self._embed(chunk)
            self._begin(self.kv, self._shape([0]), self._shape([len(chunk)]), None)
            logits, self.kv = self._f["prefill"](emb, self.kv, self.params)
            self._end(self.kv)
            self.history.extend(chunk)
        return logits.numpy().reshape(-1)

    def decode(self, token: int) -> np.ndarray:
        """Append one token; float32 logits for the next."""
        if self.kv is None:
            self.reset()
        self._check_room(1)
        emb = self._embed([token])
        self._begin(self.kv, self._shape([0]), self._shape([1]), None)
        logits, self.kv = self._f["decode"](emb, self.kv, self.params)
        self._end(self.kv)
        self.history.append(token)
        return (np.from_dlpack(logits) if self._host_logits else logits.numpy()).reshape(-1)

    def softmax(self, logits: np.ndarray, temperature: float) -> np.ndarray:
        """The library's ``softmax_with_temperature`` on one row."""
        import tvm

        x = tvm.runtime.tensor(logits.reshape(1, 1, -1).astype(np.float32), self.dev)
        t = tvm.runtime.tensor(np.asarray([temperature], dtype=np.float32), self.dev)
        return self._f["softmax_with_temperature"](x, t).numpy().reshape(-1)

    # --- generation ---------------------------------------------------------------------------
    def sampling_defaults(self) -> SamplingParams:
        c = self.weights.chat_config
        return SamplingParams(temperature=float(c.get("temperature", 0.0)), top_p=float(c.get("top_p", 1.0)),
                              repetition_penalty=float(c.get("repetition_penalty", 1.0)))

    def generate(self, prompt: str | None = None, max_tokens: int = 128, temperature: float | None = None,
                 top_p: float | None = None, repetition_penalty: float | None = None,
                 stop_token_ids: list[int] | None = None, stop_strings: list[str] | None = None,
                 seed: int | None = None, chat_template: bool = True, prompt_ids: list[int] | None = None,
                 continue_conversation: bool = False,
                 on_text: Callable[[str], None] | None = None) -> GenerationResult:
        """Generate a reply to ``prompt`` (or to raw ``prompt_ids``); ``on_text`` receives text as it streams.

        Sampling parameters left as None come from ``mlc-chat-config.json``. ``temperature`` 0 is
        greedy. With ``continue_conversation`` the KV cache is kept (multi-turn chat).
        """
        d = self.sampling_defaults()
        sp = SamplingParams(max_tokens=max_tokens,
                            temperature=d.temperature if temperature is None else temperature,
                            top_p=d.top_p if top_p is None else top_p,
                            repetition_penalty=d.repetition_penalty if repetition_penalty is None else repetition_penalty,
                            stop_token_ids=self.stop_token_ids if stop_token_ids is None else list(stop_token_ids),
                            stop_strings=self.stop_strings if stop_strings is None else list(stop_strings),
                            seed=seed)
        sp.validate()
        if not continue_conversation or self.kv is None:
            self.reset()
        first_turn = not self.history
        if prompt_ids is None:
            if prompt is None:
                raise MCPMError("give a prompt or prompt token ids")
            prompt_ids = self.chat_prompt_ids(prompt, first_turn) if chat_template else self.encode(prompt)
        prompt_ids = [int(t) for t in prompt_ids]
        if len(self.history) + len(prompt_ids) > self.context_window:
            raise MCPMError(f"the prompt has {len(prompt_ids)} tokens"
                            + (f" (plus {len(self.history)} in the conversation)" if self.history else "")
                            + f" but the context window is {self.context_window}")
        rng = np.random.default_rng(sp.seed)
        timings = Timings()
        t0 = time.perf_counter()
        logits = self.prefill(prompt_ids)
        timings.prefill_s, timings.prefill_tokens = time.perf_counter() - t0, len(prompt_ids)
        out: list[int] = []
        seen = list(prompt_ids)
        emitted = ""
        finish = "length"
        t1 = time.perf_counter()
        while len(out) < sp.max_tokens:
            token = self._sample(logits, np.asarray(seen, dtype=np.int64), sp, rng)
            if token in sp.stop_token_ids:
                finish = "stop"
                break
            out.append(token)
            seen.append(token)
            text = self.decode_text(out)
            cut = _find_stop(text, sp.stop_strings)
            if cut is not None:
                text, finish = text[:cut], "stop"
            if on_text is not None:
                # hold back an incomplete UTF-8 sequence (byte fallback) and a possible stop-string prefix
                safe = text if finish == "stop" else _stable_prefix(text, sp.stop_strings)
                if len(safe) > len(emitted):
                    on_text(safe[len(emitted):])
                    emitted = safe
            if finish == "stop":
                break
            if len(out) >= sp.max_tokens:
                break
            if len(self.history) >= self.context_window:
                finish = "context"
                break
            logits = self.decode(token)
            timings.decode_tokens += 1
        timings.decode_s = time.perf_counter() - t1
        text = self.decode_text(out)
        cut = _find_stop(text, sp.stop_strings)
        if cut is not None:
            text = text[:cut]
        if on_text is not None and len(text) > len(emitted):
            on_text(text[len(emitted):])
        return GenerationResult(text, out, prompt_ids, finish, timings)

    def _sample(self, logits: np.ndarray, seen: np.ndarray, sp: SamplingParams, rng) -> int:
        logits = apply_repetition_penalty(logits, seen, sp.repetition_penalty)
        if sp.greedy:
            return int(np.argmax(logits))
        return sample_from_probs(self.softmax(logits, sp.temperature), sp.top_p, rng)


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _stable_prefix(text: str, stops: list[str]) -> str:
    """What can be shown now: not an incomplete UTF-8 tail, not a possible start of a stop string."""
    if text.endswith("\ufffd"):
        return ""  # wait: the next byte-fallback token may complete the character
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                return text[:-k]
    return text
