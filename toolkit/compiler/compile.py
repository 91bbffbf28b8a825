"""``compile(Weights, Target) -> ModelLibrary``: a model library exporting MLC-LLM's interface."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mcpm_mobile.compiler.library import ModelLibrary, check_system_lib_prefix, model_lib_name
from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.formats.weights import LIBRARY_CONFIG_KEYS, Weights
from mcpm_mobile.support.atomic import ELF, TAR, atomic_file, check_output_file
from mcpm_mobile.support.output import Output
from mcpm_mobile.target import Target, custom_target, get_target

LIBRARY_FORMAT = 1  # bump when the library interface changes incompatibly


def parse_target(target: Target | str) -> Target:
    """A target table entry by name (``host``, ``android``, ...), or a JSON TVM target dict as text."""
    if isinstance(target, Target):
        return target
    if target.lstrip().startswith("{"):
        try:
            spec = json.loads(target)
        except ValueError as e:
            raise MCPMError(f"invalid JSON target {target}: {e}")
        if not isinstance(spec, dict):
            raise MCPMError(f"invalid JSON target {target}: expected a JSON object")
        return custom_target(spec)
    return get_target(target)


def resolve_target(target: Target | str, cuda_arch: str | None = None):
    """The TVM target of a table entry (JSON dict form; target strings are gone in TVM 0.27)."""
    import tvm
    import tvm_ffi
    from tvm.target import codegen

    from mcpm_mobile.compiler import gpu

    target = parse_target(target)
    if target.is_host:
        if cuda_arch:
            return gpu.tvm_target({"kind": "llvm"}, cuda_arch)  # raises: not a CUDA target
        cpu = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "mtriple": codegen.llvm_get_system_triple(),
               "num-cores": os.cpu_count() or 1}
        # the explicit host matters: without it host-side functions (shape_func) make TVM compile the
        # whole module for a generic x86-64, 4x slower kernels
        return tvm.target.Target(dict(cpu, host=dict(cpu)))
    try:
        tgt = gpu.tvm_target(target.tvm, cuda_arch)
    except (ValueError, TypeError, RuntimeError) as e:
        raise MCPMError(f"invalid JSON target {json.dumps(target.tvm)}: {str(e).splitlines()[0]}")
    if tvm_ffi.get_global_func(f"target.build.{tgt.kind.name}", allow_missing=True) is None:
        raise MCPMError(f"TVM {tvm.__version__} has no code generator for '{tgt.kind.name}' targets")
    return tgt


def build_metadata(weights: Weights, params: list[tuple[str, list[int], str]], *, context_window: int,
                   prefill_chunk: int, max_batch_size: int, target_str: str) -> dict:
    c = weights.config
    return {
        "model_type": weights.model_type,
        "quantization": weights.quantization.name,
        "context_window_size": context_window,
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "prefill_chunk_size": prefill_chunk,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "max_batch_size": max_batch_size,
        "active_vocab_size": None,
        "model_task": "chat",
        "params": [{"name": n, "shape": s, "dtype": d, "preprocs": [], "pipeline_stages": [0]} for n, s, d in params],
        "kv_cache": {"num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                     "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim},
        # ours (the MLC runtime ignores unknown keys): enough to refuse mismatched weights clearly
        "mcpm": {"format": LIBRARY_FORMAT, "target": target_str, "tie_word_embeddings": weights.tied,
                 "model_config": {k: getattr(c, k) for k in LIBRARY_CONFIG_KEYS}},
    }


@dataclass
class Lowered:
    """The model after our Relax pipeline: scheduled TIR kernels and VM-lowered Relax functions."""

    mod: object  # tvm.IRModule
    target: object  # tvm.target.Target
    weights: Weights
    metadata: dict  # what _metadata holds, memory_usage included
    seconds: dict


MAX_BATCH = 256  # a phone runs one or a few sequences; larger batches only exhaust memory


def _limits(weights: Weights, context_window, prefill_chunk, max_batch_size) -> tuple[int, int, int]:
    ctx = int(context_window or weights.context_window_size)
    chunk = int(prefill_chunk or weights.prefill_chunk_size)
    batch = int(max_batch_size or weights.max_batch_size)
    for name, v in (("context_window", ctx), ("prefill_chunk", chunk), ("max_batch_size", batch)):
        if v <= 0:
            raise MCPMError(f"${name} must be positive (got {v})")
    limit = weights.config.max_position_embeddings
    if ctx > limit:
        raise MCPMError(f"$context_window {ctx} exceeds the model's max_position_embeddings ({limit})")
    if batch > MAX_BATCH:
        raise MCPMError(f"$max_batch_size {batch} is above {MAX_BATCH}")
    return ctx, min(chunk, ctx), batch


def lower(weights: Weights | Path | str, target: Target | str = "host", *, context_window: int | None = None,
          prefill_chunk: int | None = None, max_batch_size: int | None = None, system_lib_prefix: str | None = None,
          cuda_arch: str | None = None, output: Output = Output()) -> Lowered:
    """Export the model of ``weights`` and run our Relax pipeline for ``target`` (no codegen)."""
    import tvm

    from mcpm_mobile.compiler import gpu, interface, sampler
    from mcpm_mobile.compiler.pipeline import get_pipeline
    from mcpm_mobile.model.minicpm import build_model, export

    weights = Weights.of(weights)
    quant = weights.quantization
    ctx, chunk, batch = _limits(weights, context_window, prefill_chunk, max_batch_size)
    tgt = resolve_target(target, cuda_arch)
    on_gpu = gpu.is_gpu(tgt)
    threads = gpu.max_threads(tgt) if on_gpu else None
    times = {}
    t0 = time.perf_counter()
    with output.stage(f"Exporting MiniCPM ({weights.config.num_hidden_layers} layers, {quant.name})"):
        model = build_model(weights.config, quant, tgt, tied=weights.tied)
        mod, named = export(model)
        if on_gpu:
            mod = gpu.replace_merge_state(mod, weights.config.num_attention_heads, weights.config.head_dim,
                                          quant.model_dtype, tgt)
        params = [(n, [int(x) for x in p.shape], p.dtype) for n, p in named]
        mod = interface.attach_functions(mod, hidden_size=weights.config.hidden_size, dtype=quant.model_dtype,
                                         prefill_chunk_size=chunk, gpu_threads=threads)
        mod = interface.attach_variable_bounds(mod, {"seq_len": chunk, "batch_size": batch,
                                                     "total_seq_len": ctx})
        if tgt.kind.name in gpu.SAMPLER_KINDS:  # after the bounds above: the sampler has its own
            mod = sampler.attach_sampler(mod, max_batch_size=batch, threads=threads)
        if system_lib_prefix:
            mod = mod.with_attr("system_lib_prefix", check_system_lib_prefix(system_lib_prefix))
    times["export_s"] = time.perf_counter() - t0
    meta = build_metadata(weights, params, context_window=ctx, prefill_chunk=chunk, max_batch_size=batch,
                          target_str=str(tgt))
    t1 = time.perf_counter()
    with output.stage(f"Scheduling for {tgt.attrs.get('mcpu', tgt.kind.name)}"):
        # CSE would hoist index expressions into extra kernel arguments; MLC disables it too
        config = {"tirx.disable_cse_tir": True} if on_gpu else {}
        with tvm.transform.PassContext(opt_level=3, config=config):
            mod = get_pipeline(tgt, meta)(mod)
        if on_gpu:
            gpu.check_thread_bindings(mod)
    times["pipeline_s"] = time.perf_counter() - t1
    return Lowered(mod, tgt, weights, meta, times)


def library_kind(target: Target, out_path: Path) -> bool:
    """Whether ``out_path`` is a static system library (.tar) rather than a shared one, for ``target``."""
    if out_path.suffix not in target.suffixes:
        what = "a static system library; linking a shared library for the phone needs the NDK/Xcode" \
            if target.system_lib else "a shared library" if target.system_lib is False else "shared or static"
        raise fail(out_path, f"the {target.name} library must end in {' or '.join(target.suffixes)} ({what})")
    return out_path.suffix == ".tar" if target.system_lib is None else target.system_lib


def write_library(low: Lowered, out_path: Path, system_lib: bool, output: Output = Output(), force: bool = False) -> dict:
    """Generate code for a lowered model and write it atomically to ``out_path`` (.so or system-lib .tar);
    an existing file there is replaced only with ``force`` and only when it is a library of that kind."""
    import tvm
    from tvm import relax

    from mcpm_mobile.compiler import gpu

    tgt, times = low.target, {}
    t1 = time.perf_counter()
    with output.stage(f"Generating code for {tgt.kind.name}"):
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_cse_tir": True} if gpu.is_gpu(tgt) else {}):
            ex = relax.build(low.mod, tgt, relax_pipeline=None, system_lib=system_lib or None)
    times["build_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    with output.stage(f"{'Archiving' if system_lib else 'Linking'} {out_path.name}"):
        with atomic_file(out_path, force, TAR if system_lib else ELF) as tmp:
            lib_tmp = tmp.with_name(tmp.name + out_path.suffix)
            try:
                ex.export_library(str(lib_tmp))
                os.replace(lib_tmp, tmp)
            finally:
                lib_tmp.unlink(missing_ok=True)
    times["link_s"] = time.perf_counter() - t2
    return times


def compile_model(weights: Weights | Path | str, target: Target | str = "host", out_path: Path | str | None = None,
                  context_window: int | None = None, prefill_chunk: int | None = None,
                  max_batch_size: int | None = None, output: Output = Output(), *,
                  system_lib_prefix: str | None = None, cuda_arch: str | None = None, force: bool = False) -> ModelLibrary:
    """Compile the model that ``weights`` describe into a model library for ``target``.

    Static system libraries (``.tar``; the phone targets) are registered under ``system_lib_prefix``
    (default: :func:`model_lib_name` plus ``_``); the app loads them as ``system://<prefix without
    the last _>``. No tensors are read: only the configs (the 2B shape compiles without weights on disk).
    An existing ``out_path`` is replaced only with ``force``, and only when it is a library (ELF / tar).
    """
    weights = Weights.of(weights)
    target = parse_target(target)
    ctx, chunk, batch = _limits(weights, context_window, prefill_chunk, max_batch_size)
    if out_path is None and target.custom:
        raise MCPMError("$out_path is required with a JSON target")
    if out_path is None:
        out_path = weights.dir / target.library_file(f"{weights.model_type}-{weights.quantization.name}"
                                                   f"-{target.name}")
    out_path = Path(out_path)
    system_lib = library_kind(target, out_path)
    check_output_file(out_path, force, TAR if system_lib else ELF)  # before minutes of compiling
    if system_lib_prefix is not None and not system_lib:
        raise MCPMError("$system_lib_prefix applies to static system libraries (.tar) only")
    if system_lib:
        system_lib_prefix = check_system_lib_prefix(system_lib_prefix or model_lib_name(weights.chat_config,
                                                                                        target.key) + "_")
    low = lower(weights, target, context_window=ctx, prefill_chunk=chunk, max_batch_size=batch,
                system_lib_prefix=system_lib_prefix, cuda_arch=cuda_arch, output=output)
    times = dict(low.seconds)
    times.update(write_library(low, out_path, system_lib, output, force))
    times["total_s"] = sum(times.values())
    return ModelLibrary(out_path, low.metadata, target, system_lib_prefix if system_lib else None,
                        {k: round(v, 2) for k, v in times.items()})
