"""``mcpm-mobile compile``: MLC weights directory -> model library exporting MLC-LLM's interface."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mcpm_mobile.errors import MCPMError, fail
from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.quantize.group import QUANTIZATIONS, Quantization
from mcpm_mobile.support.atomic import atomic_file
from mcpm_mobile.support.output import Output

CHAT_CONFIG = "mlc-chat-config.json"
MODEL_TYPE = "minicpm"
LIBRARY_FORMAT = 1  # bump when the library interface changes incompatibly


@dataclass
class WeightsInfo:
    """What a weights directory says about the model (no tensors are read)."""

    dir: Path
    chat_config: dict
    config: MiniCPMConfig
    quant: Quantization
    tied: bool

    @property
    def context_window_size(self) -> int:
        return int(self.chat_config.get("context_window_size") or self.config.max_position_embeddings)

    @property
    def prefill_chunk_size(self) -> int:
        return int(self.chat_config.get("prefill_chunk_size") or min(self.context_window_size, 2048))

    @property
    def max_batch_size(self) -> int:
        return int(self.chat_config.get("model_config", {}).get("max_batch_size") or 1)


def read_weights_info(weights_dir: Path | str) -> WeightsInfo:
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise fail(weights_dir, "no such weights directory (expected the output of `mcpm-mobile quantize`)")
    path = weights_dir / CHAT_CONFIG
    if not path.is_file():
        raise fail(path, "not found (is this an mcpm-mobile/MLC weights directory?)")
    try:
        chat = json.loads(path.read_text(encoding="utf-8"))
        model_config = chat["model_config"]
        qname = chat["quantization"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(path, f"cannot read: {e}")
    if chat.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise fail(path, f"model_type '{chat.get('model_type')}' is not supported (only '{MODEL_TYPE}')")
    if qname not in QUANTIZATIONS:
        raise fail(path, f"unknown quantization '{qname}' (supported: {', '.join(QUANTIZATIONS)})")
    raw = dict(model_config)
    raw.setdefault("model_type", MODEL_TYPE)
    config = MiniCPMConfig.from_dict(raw, path)
    tied = config.tie_word_embeddings
    if tied is None:
        tied = not _has_tensor(weights_dir, "lm_head")
    return WeightsInfo(weights_dir, chat, config, QUANTIZATIONS[qname], bool(tied))


def _has_tensor(weights_dir: Path, prefix: str) -> bool:
    index = weights_dir / "tensor-cache.json"
    if not index.is_file():
        return False
    try:
        records = json.loads(index.read_text())["records"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(r["name"].startswith(prefix + ".") for shard in records for r in shard["records"])


def resolve_target(target: str, cuda_arch: str | None = None):
    """A target name -> TVM target (JSON dict form; target strings are gone in TVM 0.27).

    ``host``: llvm for this machine's CPU; ``android``, ``android-adreno``, ``harmonyos``, ``ios``,
    ``cuda``: the GPU presets of ``gpu.PRESETS``; or a JSON target dict.
    """
    import tvm
    from tvm.target import codegen

    from mcpm_mobile.compiler import gpu

    if target in ("host", "llvm", "cpu"):
        cpu = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "mtriple": codegen.llvm_get_system_triple(),
               "num-cores": os.cpu_count() or 1}
        # the explicit host matters: without it host-side functions (shape_func) make TVM compile the
        # whole module for a generic x86-64, 4x slower kernels
        return tvm.target.Target(dict(cpu, host=dict(cpu)))
    if target in gpu.PRESETS:
        return gpu.preset(target, cuda_arch)
    if target.startswith("{"):
        import tvm_ffi

        try:
            tgt = tvm.target.Target(json.loads(target))
        except (ValueError, TypeError, RuntimeError) as e:
            raise MCPMError(f"invalid JSON target {target}: {str(e).splitlines()[0]}")
        if tvm_ffi.get_global_func(f"target.build.{tgt.kind.name}", allow_missing=True) is None:
            raise MCPMError(f"TVM {tvm.__version__} has no code generator for '{tgt.kind.name}' targets")
        return tgt
    raise MCPMError(f"unknown target '{target}' (choose from host, {', '.join(gpu.PRESETS)} or a JSON target dict)")


def check_system_lib_prefix(prefix: str) -> str:
    """TVM 0.27 fails to build a system library with a prefix under 8 characters, and a prefix
    starting with a digit makes OpenCL/Metal kernel names invalid."""
    from mcpm_mobile.targets.model_lib import IDENTIFIER

    if not (IDENTIFIER.match(prefix) and len(prefix) >= 8):
        raise MCPMError(f"--system-lib-prefix '{prefix}': must be a C identifier (letters, digits, '_', "
                        "not starting with a digit) of at least 8 characters")
    return prefix


def build_metadata(info: WeightsInfo, params: list[tuple[str, list[int], str]], *, context_window: int,
                   prefill_chunk: int, max_batch_size: int, target_str: str) -> dict:
    c = info.config
    return {
        "model_type": MODEL_TYPE,
        "quantization": info.quant.name,
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
        "mcpm": {"format": LIBRARY_FORMAT, "target": target_str, "tie_word_embeddings": info.tied,
                 "model_config": {k: getattr(c, k) for k in (
                     "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "rms_norm_eps", "rope_theta", "scale_emb", "scale_depth",
                     "dim_model_base", "max_position_embeddings", "rope_scaling")}},
    }


@dataclass
class Lowered:
    """The model after our Relax pipeline: scheduled TIR kernels and VM-lowered Relax functions."""

    mod: object  # tvm.IRModule
    target: object  # tvm.target.Target
    info: WeightsInfo
    metadata: dict
    seconds: dict


def _limits(info: WeightsInfo, context_window, prefill_chunk, max_batch_size) -> tuple[int, int, int]:
    ctx = int(context_window or info.context_window_size)
    chunk = int(prefill_chunk or info.prefill_chunk_size)
    batch = int(max_batch_size or info.max_batch_size)
    for name, v in (("--context-window", ctx), ("--prefill-chunk", chunk), ("--max-batch-size", batch)):
        if v <= 0:
            raise MCPMError(f"{name} must be positive (got {v})")
    return ctx, min(chunk, ctx), batch


def lower(weights_dir: Path | str, target: str = "host", *, context_window: int | None = None,
          prefill_chunk: int | None = None, max_batch_size: int | None = None, system_lib_prefix: str | None = None,
          cuda_arch: str | None = None, out: Output = Output()) -> Lowered:
    """Export the model of ``weights_dir`` and run our Relax pipeline for ``target`` (no codegen)."""
    import tvm

    from mcpm_mobile.compiler import gpu, interface, sampler
    from mcpm_mobile.compiler.pipeline import get_pipeline
    from mcpm_mobile.model.minicpm import build_model, export

    info = read_weights_info(weights_dir)
    ctx, chunk, batch = _limits(info, context_window, prefill_chunk, max_batch_size)
    tgt = resolve_target(target, cuda_arch)
    on_gpu = gpu.is_gpu(tgt)
    threads = gpu.max_threads(tgt) if on_gpu else None
    times = {}
    t0 = time.perf_counter()
    with out.stage(f"Exporting MiniCPM ({info.config.num_hidden_layers} layers, {info.quant.name})"):
        model = build_model(info.config, info.quant, tgt, tied=info.tied)
        mod, named = export(model)
        params = [(n, [int(x) for x in p.shape], p.dtype) for n, p in named]
        mod = interface.attach_functions(mod, hidden_size=info.config.hidden_size, dtype=info.quant.model_dtype,
                                         prefill_chunk_size=chunk, gpu_threads=threads)
        mod = interface.attach_variable_bounds(mod, {"seq_len": chunk, "batch_size": batch,
                                                     "total_seq_len": ctx})
        if tgt.kind.name in gpu.SAMPLER_KINDS:  # after the bounds above: the sampler has its own
            mod = sampler.attach_sampler(mod, max_batch_size=batch, threads=threads)
        if system_lib_prefix:
            mod = mod.with_attr("system_lib_prefix", check_system_lib_prefix(system_lib_prefix))
    times["export_s"] = time.perf_counter() - t0
    meta = build_metadata(info, params, context_window=ctx, prefill_chunk=chunk, max_batch_size=batch,
                          target_str=str(tgt))
    t1 = time.perf_counter()
    with out.stage(f"Scheduling for {tgt.attrs.get('mcpu', tgt.kind.name)}"):
        # CSE would hoist index expressions into extra kernel arguments; MLC disables it too
        config = {"tirx.disable_cse_tir": True} if on_gpu else {}
        with tvm.transform.PassContext(opt_level=3, config=config):
            mod = get_pipeline(tgt, meta)(mod)
        if on_gpu:
            gpu.check_thread_bindings(mod)
    times["pipeline_s"] = time.perf_counter() - t1
    return Lowered(mod, tgt, info, meta, times)


def _library_kind(target: str, output: Path) -> bool:
    """Whether ``output`` is a static system library (.tar) rather than a shared one (.so)."""
    from mcpm_mobile.compiler import gpu

    if target in gpu.PHONE_TARGETS:
        if output.suffix != ".tar":
            raise MCPMError(f"{output}: the {target} library must end in .tar (a static system library; "
                            "linking a .so for the phone needs the NDK/Xcode)")
        return True
    if target in ("host", "llvm", "cpu"):
        if output.suffix not in (".so", ".dylib", ".dll"):
            raise MCPMError(f"{output}: the host library must end in .so")
        return False
    if output.suffix not in (".so", ".tar"):
        raise MCPMError(f"{output}: the {target} library must end in .so or .tar")
    return output.suffix == ".tar"


def write_library(low: Lowered, output: Path, system_lib: bool, out: Output = Output()) -> dict:
    """Generate code for a lowered model and write it atomically to ``output`` (.so or system-lib .tar)."""
    import tvm
    from tvm import relax

    from mcpm_mobile.compiler import gpu

    tgt, times = low.target, {}
    t1 = time.perf_counter()
    with out.stage(f"Generating code for {tgt.kind.name}"):
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_cse_tir": True} if gpu.is_gpu(tgt) else {}):
            ex = relax.build(low.mod, tgt, relax_pipeline=None, system_lib=system_lib or None)
    times["build_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    with out.stage(f"{'Archiving' if system_lib else 'Linking'} {output.name}"):
        with atomic_file(output) as tmp:
            lib_tmp = tmp.with_name(tmp.name + output.suffix)
            try:
                ex.export_library(str(lib_tmp))
                os.replace(lib_tmp, tmp)
            finally:
                lib_tmp.unlink(missing_ok=True)
    times["link_s"] = time.perf_counter() - t2
    return times


def compile_model(weights_dir: Path | str, target: str = "host", output: Path | str | None = None,
                  context_window: int | None = None, prefill_chunk: int | None = None,
                  max_batch_size: int | None = None, out: Output = Output(), *,
                  system_lib_prefix: str | None = None, cuda_arch: str | None = None) -> dict:
    """Compile the model described by ``weights_dir``/mlc-chat-config.json into a model library.

    ``target``: ``host`` (a shared library for this CPU), ``android``, ``android-adreno``,
    ``harmonyos``, ``ios`` (static system libraries, ``.tar``) or ``cuda`` (``.so`` or ``.tar``).
    A ``.tar`` is registered under ``system_lib_prefix`` (default: ``{model_type}_{quantization}_{hash}_``,
    the ``model_lib`` name plus ``_``); the app loads it as ``system://<prefix without the last _>``.
    No weights are read: only the config (the 2B shape compiles without tensors on disk).
    Returns a summary: output path, metadata limits, seconds per stage.
    """
    from mcpm_mobile.targets.model_lib import model_lib_name

    info = read_weights_info(weights_dir)
    ctx, chunk, batch = _limits(info, context_window, prefill_chunk, max_batch_size)
    if output is None and target.startswith("{"):
        raise MCPMError("-o/--output is required with a JSON target")
    if output is None:
        from mcpm_mobile.compiler import gpu

        suffix = ".tar" if target in gpu.PHONE_TARGETS else ".so"
        output = Path(weights_dir) / f"{MODEL_TYPE}-{info.quant.name}-{target}{suffix}"
    output = Path(output)
    system_lib = _library_kind(target, output)
    if system_lib_prefix is not None and not system_lib:
        raise MCPMError("--system-lib-prefix applies to static system libraries (.tar) only")
    if system_lib:
        system_lib_prefix = check_system_lib_prefix(system_lib_prefix or model_lib_name(info.chat_config, target) + "_")
    low = lower(weights_dir, target, context_window=ctx, prefill_chunk=chunk, max_batch_size=batch,
                system_lib_prefix=system_lib_prefix, cuda_arch=cuda_arch, out=out)
    times = dict(low.seconds)
    times.update(write_library(low, output, system_lib, out))
    times["total_s"] = sum(times.values())
    tgt = low.target
    summary = {"output": str(output), "target": str(tgt), "model_type": MODEL_TYPE,
               "quantization": info.quant.name, "context_window_size": ctx, "prefill_chunk_size": chunk,
               "max_batch_size": batch, "num_params": len(low.metadata["params"]), "tied": info.tied,
               "system_lib_prefix": system_lib_prefix if system_lib else None,
               "seconds": {k: round(v, 2) for k, v in times.items()}}
    return summary
