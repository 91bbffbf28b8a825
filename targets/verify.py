"""``mcpm-mobile verify DIST/<target>``: re-check a package before it ships."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.errors import fail
from mcpm_mobile.formats import chat_config
from mcpm_mobile.formats.tensor_cache import INDEX, check_shards, read_index
from mcpm_mobile.support.ar import defined_symbols
from mcpm_mobile.targets import app_config
from mcpm_mobile.targets import manifest as manifest_io
from mcpm_mobile.targets.android import asset_pack
from mcpm_mobile.targets.model_lib import embedded_metadata, tar_members


def verify_package(root: Path) -> dict:
    """Raise a one-line MCPMError on the first problem; return what was checked."""
    root = Path(root)
    if not root.is_dir():
        raise fail(root, "no such package directory")
    manifest = manifest_io.read_manifest(root)
    manifest_io.check_files(root, manifest)
    weight_dirs = sorted({p.parent for p in root.rglob(INDEX)})
    for wdir in weight_dirs:
        check_shards(wdir, md5=True)
        chat_config.read(wdir)
    libs = sorted(p for p in root.rglob("*") if p.suffix in (".tar", ".so") and p.parent.name == "lib")
    for lib in libs:
        meta = embedded_metadata(lib)
        for wdir in weight_dirs:
            check_library_matches(lib, meta, wdir)
        sidecar = lib.with_name(lib.stem + ".metadata.json")
        if sidecar.is_file() and json.loads(sidecar.read_text()) != meta:
            raise fail(sidecar, "differs from the _metadata embedded in the library")
    for cfg_path in root.rglob(app_config.FILENAME):
        if manifest.get("target") == "ios":
            app_config.check_ios(cfg_path)
        else:
            app_config.check_android(cfg_path, files_dir=root)
        check_app_config(cfg_path, libs)
    packs = None
    if (root / asset_pack.ROOT).is_dir():
        packs = asset_pack.check_layout(root / asset_pack.ROOT)
    ggufs = sorted(root.rglob("*.gguf"))
    for gguf in ggufs:
        check_gguf(gguf)
    onnx_models = sorted(root.rglob("*.onnx"))
    for model in onnx_models:
        check_onnx(model)
    return {"package": str(root), "target": manifest.get("target"), "files": len(manifest["files"]),
            "weights": [str(w.relative_to(root)) for w in weight_dirs], "libraries": [str(x.relative_to(root)) for x in libs],
            "gguf": [str(g.relative_to(root)) for g in ggufs],
            "onnx": [str(m.relative_to(root)) for m in onnx_models], "asset_packs": packs}


def verify_apk(root: Path, apk: Path) -> dict:
    """An APK (or split) built from this package's asset packs: model files STORED, aligned and unchanged."""
    manifest = manifest_io.read_manifest(root)
    prefix = asset_pack.ROOT + "/"
    expected = {}
    for f in manifest["files"]:
        parts = f["path"].split("/src/main/assets/", 1)
        if f["path"].startswith(prefix) and len(parts) == 2:
            expected[parts[1]] = (f["size"], f["sha256"])
    if not expected:
        raise fail(root, "has no asset packs (built without --bundle-weights)")
    return asset_pack.check_apk(apk, expected)


def check_library_matches(lib: Path, meta: dict, weights_dir: Path) -> None:
    """The library's ``_metadata`` agrees with the weights: model, quantization, every parameter."""
    chat = chat_config.read(weights_dir)
    for key in ("model_type", "quantization"):
        if meta.get(key) != chat[key]:
            raise fail(lib, f"library is for {key} '{meta.get(key)}' but {weights_dir.name} has '{chat[key]}'")
    stored = {r["name"]: r for shard in read_index(weights_dir)["records"] for r in shard["records"]}
    for p in meta["params"]:
        rec = stored.get(p["name"])
        if rec is None:
            raise fail(weights_dir / INDEX, f"parameter '{p['name']}' required by {lib.name} is missing")
        if list(rec["shape"]) != list(p["shape"]) or rec["dtype"] != p["dtype"]:
            raise fail(weights_dir / INDEX, f"parameter '{p['name']}' is {rec['shape']} {rec['dtype']}, "
                                            f"{lib.name} expects {p['shape']} {p['dtype']}")


def check_gguf(path: Path) -> None:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct errors on damaged files
        raise fail(path, f"not a readable GGUF file: {e}")
    if "general.architecture" not in reader.fields or not reader.tensors:
        raise fail(path, "GGUF has no architecture or no tensors")


def check_onnx(path: Path) -> None:
    """The graph parses, every external tensor lies inside its data file, genai_config.json is beside it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise fail(path, f"not a readable ONNX model: {e}")
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in init.external_data}
        data = path.parent / ext["location"]
        end = int(ext.get("offset", 0)) + int(ext.get("length", 0))
        if not data.is_file() or data.stat().st_size < end:
            raise fail(data, f"external data of '{init.name}' is missing or truncated")
    genai = path.parent / "genai_config.json"
    try:
        json.loads(genai.read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(genai, f"cannot read: {e}")


def check_app_config(path: Path, libs: list[Path]) -> None:
    try:
        entries = json.loads(path.read_text())["model_list"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(path, f"cannot read: {e}")
    for entry in entries:
        symbol = entry["model_lib"] + "___tvm_ffi__library_bin"
        found = any(symbol in defined_symbols(obj) or "_" + symbol in defined_symbols(obj)
                    for lib in libs if lib.suffix == ".tar" for _, obj in tar_members(lib))
        if not found:
            raise fail(path, f"model_lib '{entry['model_lib']}' has no {symbol} symbol in any library")
