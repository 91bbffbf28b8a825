"""``quantize(Checkpoint, Quantization) -> Weights``: an MLC weights directory, streaming tensor by tensor."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mcpm_mobile.errors import fail
from mcpm_mobile.formats import chat_config
from mcpm_mobile.formats.tensor_cache import TensorCacheWriter
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.model import chat_format
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.model.param_map import MLCParam, param_plan, stored_shapes
from mcpm_mobile.model.quantization import ELEMS_PER_WORD, Quantization, get_quantization
from mcpm_mobile.model.tokenizer import copy_tokenizer_files, tokenizer_info
from mcpm_mobile.kernels import mlc_group
from mcpm_mobile.quantize.group import quantize_rows
from mcpm_mobile.support.atomic import atomic_dir
from mcpm_mobile.support.jsonio import read_json
from mcpm_mobile.support.output import Output

def check_group_size(ckpt: Checkpoint, quant: Quantization) -> None:
    if not quant.quantized:
        return
    c = ckpt.config
    for key in ("hidden_size", "intermediate_size"):
        if getattr(c, key) % quant.group_size:
            raise fail(ckpt.dir / "config.json", f"{key} {getattr(c, key)} is not divisible by the group size "
                                                 f"{quant.group_size} of {quant.name}")


def quantize(ckpt: Checkpoint, quant: Quantization, out_dir: Path | str, force: bool = False,
             output: Output = Output(), context_window: int | None = None, prefill_chunk: int | None = None,
             thinking: bool | None = None) -> Weights:
    """Quantize ``ckpt`` into ``out_dir`` (written to a temp dir, renamed at the end).

    The chat format is the checkpoint's (model/chat_format.py); ``thinking`` switches MiniCPM4.1's thinking
    mode (None: the template's default, on). The returned weights carry ``summary``: sizes and timing of the run."""
    fmt = chat_format.detect(ckpt.dir, ckpt.config, thinking)
    check_group_size(ckpt, quant)
    start = time.perf_counter()
    with atomic_dir(Path(out_dir), force=force, inputs=(ckpt.dir,), kind="weights") as tmp:
        writer = TensorCacheWriter(tmp)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            with output.progress(f"Quantizing to {quant.name}", ckpt.weight_bytes) as advance:
                for param in param_plan(ckpt.config):
                    _convert_param(ckpt, param, quant, writer, advance, pool)
        index = writer.finish()
        files = copy_tokenizer_files(ckpt.dir, tmp, ckpt.config.vocab_size)
        generation = read_json(ckpt.dir / "generation_config.json", missing_ok=True, root=ckpt.dir)
        cfg = chat_config.build(ckpt.config, quant.name, files, tokenizer_info(tmp / "tokenizer.json"),
                                generation, context_window, prefill_chunk, chat_format=fmt)
        (tmp / chat_config.FILENAME).write_text(json.dumps(cfg, indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    seconds = time.perf_counter() - start
    weights = Weights(Path(out_dir), cfg, ckpt.config, quant, index)
    meta = index["metadata"]
    weights.summary = {
        "output": str(out_dir), "quantization": quant.name, "params": writer.param_count,
        "tensors": meta["ParamSize"], "bytes": int(meta["ParamBytes"]), "bits_per_param": round(meta["BitsPerParam"], 4),
        "shards": len(index["records"]), "input_bytes": ckpt.weight_bytes, "seconds": round(seconds, 3),
        "input_gb_per_s": round(ckpt.weight_bytes / seconds / 1e9, 3),
        "test_checkpoint": ckpt.config.is_test_checkpoint,
    }
    return weights


def quantize_checkpoint(model_dir: Path | str, out_dir: Path | str, quantization: str = "q4f16_1",
                        force: bool = False, output: Output = Output(), context_window: int | None = None,
                        prefill_chunk: int | None = None, thinking: bool | None = None) -> dict:
    """:func:`quantize` from paths and a quantization name; returns the summary."""
    quant = get_quantization(quantization)
    return quantize(Checkpoint(model_dir), quant, out_dir, force, output, context_window, prefill_chunk, thinking).summary


def _convert_param(ckpt: Checkpoint, param: MLCParam, quant: Quantization, writer: TensorCacheWriter, advance,
                   pool: Executor) -> None:
    infos = [ckpt.tensors[s] for s in param.sources]
    if param.kind == "norm":
        writer.add(param.name + ".weight", _in_range(ckpt.get(param.sources[0]), quant, infos).astype(quant.model_dtype))
        advance(infos[0].nbytes)
        return
    rows = sum(i.shape[0] for i in infos)
    cols = infos[0].shape[1]
    if not quant.quantized:
        dense = np.empty((rows, cols), quant.model_dtype)
        for r0, r1, block in _row_blocks(ckpt, param.sources, advance):
            dense[r0:r1] = _in_range(block, quant, infos)
        writer.add(param.name + ".weight", dense)
        return
    (wname, _), (sname, _) = stored_shapes(param, rows, cols, quant).items()
    groups = quant.groups(cols)
    q_weight = np.empty((rows, groups * quant.group_size // ELEMS_PER_WORD), quant.storage_dtype)
    q_scale = np.empty((rows, groups), quant.model_dtype)
    fast = (q_weight, q_scale) if quant.group_size == mlc_group.GROUP else None
    for r0, r1, block in _row_blocks(ckpt, param.sources, advance, fast):
        if block is not None:
            q_weight[r0:r1], q_scale[r0:r1] = quantize_rows(_in_range(block, quant, infos), quant.model_dtype, pool)
    if quant.layout == "KN" and param.kind == "linear":
        q_weight, q_scale = np.ascontiguousarray(q_weight.T), np.ascontiguousarray(q_scale.T)
    writer.add(wname, q_weight, logical_params=rows * cols)
    writer.add(sname, q_scale, logical_params=0)


def _in_range(block: np.ndarray, quant: Quantization, sources: list) -> np.ndarray:
    """``block``, refused if it holds values the model dtype cannot (a bf16 weight of 1e38 in float16)."""
    dtype = np.dtype(quant.model_dtype)
    if dtype.itemsize < 4 and block.size and np.abs(block).max() > np.finfo(dtype).max:
        names = "', '".join(s.name for s in sources)
        raise fail(sources[0].file, f"tensor '{names}' has values beyond {dtype}'s range; "
                                    "choose a float32 quantization (q4f32_1 or q0f32)")
    return block


def _row_blocks(ckpt: Checkpoint, sources: tuple[str, ...], advance, outputs=None):
    """Yield (row_start, row_end, block) over the row-concatenation of ``sources``, each block a float32 array.

    With ``outputs`` (q_weight, q_scale), a block the compiled kernel (``kernels/mlc_group.py``) quantizes
    from its stored bytes (BF16/F16/F32, safetensors or .bin) straight into those arrays is yielded as None; where
    the kernel cannot run, and for rows it flags (NaN/Inf, or beyond float16's range for a float16 model),
    the block comes from ``ckpt.get`` for the numpy path, which reports them (``Checkpoint.get``, ``_in_range``).
    Each block of rows is mapped on its own, so memory holds one block of the input at a time."""
    base = 0
    for name in sources:
        for rows, nbytes in ckpt.row_chunks(name):
            r0, r1 = base + rows.start, base + rows.stop
            done = None
            if outputs is not None:
                q, s = (a[r0:r1] for a in outputs)
                done = mlc_group.quantize(ckpt.stored(name, rows), ckpt.tensors[name].dtype, s.dtype.name, q, s)
            yield r0, r1, None if done is not None and done[2] else ckpt.get(name, rows)
            advance(nbytes)
        base += ckpt.tensors[name].shape[0]
