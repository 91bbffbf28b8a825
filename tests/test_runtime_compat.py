"""`mcpm-mobile inspect`: the runtime-facing formats read out of compiled libraries, checked against what
TVM 0.27's own serializer writes (magic/version from tvm/include/tvm/runtime/vm/executable.h and
src/runtime/vm/executable.cc) and against the VM loaded by the TVM runtime on the host."""
import json
import struct
import tarfile

import pytest

from conftest import run_cli
from mcpm_mobile.errors import MCPMError
from mcpm_mobile.compiler import runtime_compat, vm_exec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def libs(quantized_dir, tmp_path_factory):
    from mcpm_mobile.compiler.compile import compile_model

    out = tmp_path_factory.mktemp("libs")
    weights = quantized_dir("gqa_untied")
    made = {}
    for target, name in (("android", "lib.tar"), ("host", "lib.so")):
        made[target] = out / name
        compile_model(weights, target=target, out_path=made[target],
                      **({"system_lib_prefix": "minicpm_q4f16_1_cafe0123_"} if target == "android" else {}))
    return made


def test_android_library_formats(libs):
    f = runtime_compat.read_formats(libs["android"])
    assert f["vm_magic"] == "0xD225DE2F4214151E" and f["vm_version"] == "0.14"
    assert f["attention_backends"] == ["tirx"]
    assert f["kv_cache_config_entries"] == 5 and f["kv_cache_create_args"] == 28  # compiler/kv_compat.py
    assert f["system_lib"] == "minicpm_q4f16_1_cafe0123"
    assert "TVMFFIFunctionCall" in f["ffi_imports"] and f["ffi_exports"] > 10
    assert "vm.builtin.paged_attention_kv_cache_create" in f["builtins"]
    c = runtime_compat.compatibility(f)
    assert "141c22fd" in c["oldest_tvm"] and "v0.24.0" in c["oldest_tvm"]
    assert c["oldest_mlc_llm"].startswith("mlc-llm 46a1d117")
    assert {r["key"] for r in c["requires"]} == set(runtime_compat.FEATURES) - {"kv_config_6", "query_positions"}


def test_host_library_matches_what_the_tvm_runtime_loads(libs):
    """The VM header we read from the .so is the one TVM's loader accepted: same function table."""
    import tvm
    from tvm import relax

    f = runtime_compat.read_formats(libs["host"])
    assert f["vm_version"] == "0.14" and f["kv_cache_config_entries"] == 5
    data = libs["host"].read_bytes()
    exe = vm_exec.parse(data, vm_exec.find(data))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(libs["host"])), tvm.cpu())
    for name in ("embed", "batch_prefill", "batch_decode", "create_tir_paged_kv_cache", "_metadata"):
        assert name in exe.functions
        assert vm.module.get_function(name, query_imports=True) is not None


def test_compatibility_follows_the_formats(libs):
    """A 6-entry KV config (stock apache-tvm 0.27) needs 27c2e019, which no mlc-llm we read has; the
    "tir" tag of older TVM moves the bound back to the VM magic."""
    f = runtime_compat.read_formats(libs["android"])
    c = runtime_compat.compatibility(dict(f, kv_cache_config_entries=6))
    assert "27c2e019" in c["oldest_tvm"] and "v0.27.0" in c["oldest_tvm"]
    assert c["oldest_mlc_llm"].startswith("none up to mlc-llm 79d603f0")
    c = runtime_compat.compatibility(dict(f, attention_backends=["tir"]))
    assert "8e402113" in c["oldest_tvm"]
    # LongRoPE libraries also read query positions: an older builtin, the bound stays where it was
    c = runtime_compat.compatibility(dict(f, builtins=f["builtins"] + [runtime_compat.QUERY_POSITIONS]))
    assert "query_positions" in {r["key"] for r in c["requires"]} and "141c22fd" in c["oldest_tvm"]


def test_parser_follows_the_header(libs, tmp_path):
    """Only the V2 magic has a memory-scope section: relabelled V1, the same bytes no longer parse."""
    import io

    with tarfile.open(libs["android"]) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    old = tmp_path / "v1.tar"
    with tarfile.open(old, "w") as tf:
        for m, data in members:
            data = data.replace(struct.pack("<Q", vm_exec.MAGIC_V2), struct.pack("<Q", vm_exec.MAGIC_V1), 1)
            tf.addfile(m, io.BytesIO(data))
    with pytest.raises(MCPMError, match="unreadable VM executable"):
        runtime_compat.read_formats(old)


def test_inspect_cli(libs):
    r = run_cli("inspect", libs["android"], "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["kv_cache_config_entries"] == 5 and 'backend_name == \\"tirx\\"' in json.dumps(s["requires"])
    r = run_cli("inspect", libs["android"])
    assert "Oldest TVM runtime: apache/tvm 141c22fd" in r.output and "grep -n" in r.output
    bad = libs["android"].with_name("notalib.tar")
    with tarfile.open(bad, "w"):
        pass
    r = run_cli("inspect", bad)
    assert r.exit_code == 2 and "no Relax VM executable" in r.output
