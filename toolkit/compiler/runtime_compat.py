"""Which app runtimes load a model library: the formats it carries, and the oldest runtime that reads each.

``read_formats`` reads the facts out of the library's own bytes (any ``.tar`` or ``.so`` TVM wrote);
``FEATURES`` says, for each format, the apache/tvm commit that introduced it on the runtime side and the
mlc-llm commit whose pinned TVM (``3rdparty/tvm``) carries it. Sources: docs/contracts.md.
"""
from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.support.ar import defined_symbols, undefined_symbols
from mcpm_mobile.compiler import vm_exec
from mcpm_mobile.compiler.library import LIBRARY_BIN, tar_members

FFI_PREFIX = "__tvm_ffi_"
KV_CREATE = "vm.builtin.paged_attention_kv_cache_create"
ATTENTION_TAGS = ("tir", "tirx", "flashinfer")
MLC_LLM_LATEST_READ = "79d603f0 (2026-07-23)"


@dataclass(frozen=True)
class Feature:
    key: str
    what: str
    tvm_commit: str  # apache/tvm commit that made the runtime accept it
    tvm_date: str
    tvm_release: str  # first apache/tvm release containing it
    mlc_commit: str  # first mlc-llm commit whose pinned TVM carries it ("" = none yet)
    mlc_release: str
    check: str  # what to look for in the app's TVM source tree (mlc-llm: 3rdparty/tvm)


QUERY_POSITIONS = "vm.builtin.attention_kv_cache_get_query_positions"

FEATURES = {f.key: f for f in [
    Feature("query_positions", f"in-sequence query positions for LongRoPE ({QUERY_POSITIONS}; "
            "called vm.builtin.paged_attention_kv_cache_get_query_positions before)",
            "3ef478b4 (#16568)", "2024-02-21", "v0.16.0", "5a1bd3c1 (#2857, 2024-08-28) at the latest", "v0.17.1",
            f'grep -n "{QUERY_POSITIONS.removeprefix("vm.builtin.")}" src/runtime/vm/kv_state.cc'),
    Feature("tensor_cache", "weights indexed by tensor-cache.json (was ndarray-cache.json)",
            "3c36ce2e (#18275)", "2025-09-06", "v0.22.0", "91d95f9d (#3326, 2025-09-07)", "v0.20.0",
            'grep -n "tensor-cache.json" src/runtime/vm/tensor_cache_support.cc'),
    Feature("ffi_symbols", "kernels exported as __tvm_ffi_<name>, module blob <prefix>__tvm_ffi__library_bin",
            "e1700e1a (#18273)", "2025-09-06", "v0.22.0", "2f30edbb (#3330, 2025-09-08)", "v0.20.0",
            'grep -rn "__tvm_ffi__library_bin" 3rdparty/tvm-ffi/include/tvm/ffi/extra/module.h'),
    Feature("ffi_init_once", "host code calls TVMFFIHandleInitOnce (tvm-ffi C API)",
            "tvm-ffi 25c25aec (#317)", "2025-12-05", "tvm-ffi v0.1.5", "46a1d117 (2026-03-27) at the latest",
            "v0.20.0", 'grep -rn "TVMFFIHandleInitOnce" 3rdparty/tvm-ffi/include/tvm/ffi/c_api.h'),
    Feature("vm_magic_v2", "VM executable magic 0xD225DE2F4214151E (with a memory-scope section)",
            "8e402113 (#18523)", "2026-01-09", "v0.23.0", "46a1d117 (2026-03-27) at the latest", "v0.20.0",
            'grep -n "kTVMVMBytecodeMagicV2" src/runtime/vm/executable.cc'),
    Feature("attention_tirx", 'KV-cache attention kernels tagged "tirx" (was "tir"; the runtime accepts one)',
            "141c22fd (#18913)", "2026-03-19", "v0.24.0", "46a1d117 (2026-03-27)", "v0.20.0",
            'grep -n \'backend_name == "tirx"\' src/runtime/vm/attn_backend.cc'),
    Feature("kv_config_6", "KV-cache constructor config of 6 entries (adds layer_sliding_window_size)",
            "27c2e019 (#20121)", "2026-08-12", "v0.27.0", "", "",
            "grep -n 'cache_config.size() == 6' src/runtime/vm/paged_kv_cache.cc"),
]}


def read_formats(lib_path: Path) -> dict:
    """The runtime-facing formats of a model library, read from its bytes."""
    lib_path = Path(lib_path)
    if not lib_path.is_file():
        raise fail(lib_path, "model library not found")
    objects = tar_members(lib_path) if lib_path.suffix == ".tar" else [(lib_path.name, lib_path.read_bytes())]
    defined, imported, exe = [], set(), None
    for _, obj in objects:
        if obj[:4] in (b"\x7fELF", b"\xcf\xfa\xed\xfe"):
            defined += defined_symbols(obj)
            imported |= set(undefined_symbols(obj))
        if exe is None and (start := vm_exec.find(obj)) >= 0:
            try:
                exe = vm_exec.parse(obj, start)
            except (ValueError, IndexError, struct.error) as e:
                raise fail(lib_path, f"unreadable VM executable: {e}")
    if exe is None:
        raise fail(lib_path, "no Relax VM executable inside: not a model library")
    blobs = [s for s in defined if s.endswith(LIBRARY_BIN)]
    prefix = blobs[0].lstrip("_")[: -len(LIBRARY_BIN)] if blobs else None
    return {
        "vm_magic": f"0x{exe.magic:016X}", "vm_version": exe.version,
        "attention_backends": sorted({c for c in exe.constants if isinstance(c, str) and c in ATTENTION_TAGS}),
        "kv_cache_config_entries": _kv_config_entries(exe),
        "kv_cache_create_args": next((len(c.args) for c in exe.calls if c.func == KV_CREATE), None),
        "system_lib": prefix.rstrip("_") if prefix else None,
        "ffi_exports": sum(s.lstrip("_").startswith(FFI_PREFIX.lstrip("_")) for s in defined),
        "ffi_imports": sorted(s.lstrip("_") for s in imported if s.lstrip("_").startswith(("TVMFFI", "TVMBackend"))),
        "builtins": sorted({c.func for c in exe.calls if c.func.startswith("vm.builtin.")}),
    }


def _kv_config_entries(exe: vm_exec.VMExecutable) -> int | None:
    """Entries of the ShapeTuple passed first to the KV-cache constructor (built by ``make_shape``)."""
    for i, call in enumerate(exe.calls):
        if call.func != KV_CREATE or not call.args or call.args[0][0] != vm_exec.ARG_REGISTER:
            continue
        reg = call.args[0][1]
        for prev in reversed(exe.calls[:i]):
            if prev.dst == reg and prev.func == "vm.builtin.make_shape":
                return prev.args[1][1]
    return None


def required_features(formats: dict) -> list[Feature]:
    found = [FEATURES["tensor_cache"]]
    if QUERY_POSITIONS in formats["builtins"]:
        found.append(FEATURES["query_positions"])
    if formats["ffi_exports"] or formats["system_lib"]:
        found.append(FEATURES["ffi_symbols"])
    if "TVMFFIHandleInitOnce" in formats["ffi_imports"]:
        found.append(FEATURES["ffi_init_once"])
    if int(formats["vm_magic"], 16) == vm_exec.MAGIC_V2:
        found.append(FEATURES["vm_magic_v2"])
    if "tirx" in formats["attention_backends"]:
        found.append(FEATURES["attention_tirx"])
    if formats["kv_cache_config_entries"] == 6:
        found.append(FEATURES["kv_config_6"])
    return found


def compatibility(formats: dict) -> dict:
    """The oldest apache/tvm runtime and mlc-llm app that load a library with these formats."""
    needs = required_features(formats)
    newest = max(needs, key=lambda f: f.tvm_date)
    blocking = [f for f in needs if not f.mlc_commit]
    mlc = (f"none up to mlc-llm {MLC_LLM_LATEST_READ}, the latest we read: its runtime lacks "
           + ", ".join(f"apache/tvm {f.tvm_commit}" for f in blocking)) if blocking else \
        f"mlc-llm {newest.mlc_commit} or later (first release {newest.mlc_release})"
    return {"oldest_tvm": f"apache/tvm {newest.tvm_commit} ({newest.tvm_date}), release {newest.tvm_release}",
            "oldest_mlc_llm": mlc, "requires": [asdict(f) for f in needs]}
