"""``evaluate``: what quantization costs, measured against the float checkpoint on a text.

The text is tokenized by the checkpoint's tokenizer and cut into windows of ``context`` tokens, each
``[BOS] + context-1 text tokens``, as ``llama-perplexity`` does; in each window the predictions of the second
half are scored (positions ``context//2 .. context-2``, so every scored token has at least half a window of
context). The float model (float32 numpy on the checkpoint) gives the reference distribution; every artifact
is then run on the same ids and compared: perplexity, KL divergence from the float model (mean, median,
p99, max), top-1 agreement, and the engine's tokens/s over the whole windows.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.eval.engines import GGUFArtifact, MLCArtifact, ONNXArtifact
from mcpm_mobile.eval.float_model import FloatModel
from mcpm_mobile.eval.metrics import Scores, log_softmax
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.support.output import Output

DEFAULT_CONTEXT = 512
TOKENIZER_SAMPLE_CHARS = 20000  # the text prefix every artifact's tokenizer must split exactly as ours


def checkpoint_tokenizer(ckpt: Checkpoint):
    from tokenizers import Tokenizer

    from mcpm_mobile.model.tokenizer import sentencepiece_to_tokenizer_json

    if (ckpt.dir / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(ckpt.dir / "tokenizer.json"))
    if (ckpt.dir / "tokenizer.model").is_file():
        return Tokenizer.from_str(sentencepiece_to_tokenizer_json(ckpt.dir / "tokenizer.model"))
    raise fail(ckpt.dir, "has neither tokenizer.json nor tokenizer.model")


def make_windows(ids: list[int], context: int, bos: int, max_windows: int | None, source) -> np.ndarray:
    """[n, context] windows of ``[bos] + context-1`` consecutive text tokens."""
    step = context - 1
    n = len(ids) // step
    if n == 0:
        raise fail(source, f"has {len(ids)} tokens, fewer than one evaluation window needs ({step} + BOS for "
                           f"--context {context}); give a longer text or a smaller --context")
    n = min(n, max_windows or n)
    return np.array([[bos] + ids[k * step:(k + 1) * step] for k in range(n)], np.int64)


def evaluate(model_dir: Path | str, text: str, *, gguf=(), mlc=(), onnx=(), context: int | None = None,
             max_windows: int | None = None, threads: int | None = None, text_source="the text",
             output: Output = Output()) -> dict:
    """Float checkpoint vs each artifact on ``text``. ``mlc`` holds (weights_dir, library) pairs."""
    ckpt = Checkpoint(model_dir)
    c = ckpt.config
    threads = threads or os.cpu_count() or 1
    context = context or min(DEFAULT_CONTEXT, c.max_position_embeddings)
    if not 8 <= context <= c.max_position_embeddings:
        raise fail("--context", f"{context} must be between 8 and max_position_embeddings {c.max_position_embeddings}")
    tok = checkpoint_tokenizer(ckpt)
    ids = tok.encode(text, add_special_tokens=False).ids
    windows = make_windows(ids, context, c.bos_token_id, max_windows, text_source)
    first = context // 2
    targets = windows[:, first + 1:]
    artifacts = ([GGUFArtifact(p, context, threads) for p in gguf] + [MLCArtifact(w, lib, context, threads)
                 for w, lib in mlc] + [ONNXArtifact(p, context, threads) for p in onnx])
    try:
        sample = text[:TOKENIZER_SAMPLE_CHARS]
        sample_ids = tok.encode(sample, add_special_tokens=False).ids
        for a in artifacts:
            a.check_tokenizer(sample, sample_ids, c.vocab_size)
        steps = c.num_hidden_layers + 1 + len(artifacts) * len(windows)
        with output.progress(f"Evaluating {len(windows)} windows of {context} tokens", steps, unit="steps") as advance:
            model = FloatModel(ckpt)
            t0 = time.perf_counter()
            base = model.logits(windows, first, advance)
            reference = Scores(seconds=time.perf_counter() - t0, tokens=windows.size)
            base_logp = np.empty(base.shape, np.float32)
            for w in range(len(windows)):
                lp = log_softmax(base[w])
                reference.add(lp, targets[w], None)
                base_logp[w] = lp
            del base
            rows = []
            for a in artifacts:
                s = Scores()
                a.open()
                try:
                    for w, window in enumerate(windows.tolist()):
                        t0 = time.perf_counter()
                        logits = a.window_logits(window, first)
                        s.seconds += time.perf_counter() - t0
                        s.tokens += len(window)
                        s.add(log_softmax(logits), targets[w], base_logp[w].astype(np.float64))
                        advance()
                finally:
                    a.close()
                rows.append({"label": a.label, "kind": a.kind, "path": str(a.path), **s.summary()})
    finally:
        for a in artifacts:
            a.close()
    return {"model": str(ckpt.dir), "context": context, "windows": len(windows), "text_tokens": len(ids),
            "scored_positions": f"{first}..{context - 2} of each window", "threads": threads,
            "float": {"label": model.label, "kind": model.kind, **reference.summary()}, "artifacts": rows}
