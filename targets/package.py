"""``Package``: what ``build`` writes to DIST/<target>/ (``manifest.json`` and every file it lists).

``Package.write`` hashes the staged files into the manifest; ``Package.read(root).verify()``
re-checks a package before it ships: hashes, shards, configs, every library against the weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mcpm_mobile.compiler.library import ModelLibrary, tar_members
from mcpm_mobile.errors import fail
from mcpm_mobile.formats.chat_config import FILENAME as CHAT_CONFIG
from mcpm_mobile.formats.mlc_app import (APP_CONFIG, check_android_app_config, check_ios_app_config,
                                         estimated_vram_bytes)
from mcpm_mobile.formats.tensor_cache import INDEX
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.licenses.notice import LICENSE_JSON, NOTICE
from mcpm_mobile.support.ar import defined_symbols
from mcpm_mobile.support.atomic import MARKER
from mcpm_mobile.support.jsonio import read_json
from mcpm_mobile.support.paths import member
from mcpm_mobile.targets import manifest as manifest_io
from mcpm_mobile.targets.android import asset_pack

LIBRARY_SUFFIXES = (".tar", ".so")
TOKENIZER = "tokenizer.json"


@dataclass
class Package:
    root: Path
    manifest: dict

    @classmethod
    def write(cls, root: Path, info: dict) -> "Package":
        """Hash every file under ``root`` into its ``manifest.json`` (``info``: what was built from what)."""
        return cls(Path(root), manifest_io.write_manifest(root, info))

    @classmethod
    def read(cls, root: Path | str) -> "Package":
        root = Path(root)
        if not root.is_dir():
            raise fail(root, "no such package directory")
        return cls(root, manifest_io.read_manifest(root))

    @property
    def files(self) -> list[dict]:
        return self.manifest["files"]

    def verify(self) -> dict:
        """Raise a one-line MCPMError on the first problem; return what was checked."""
        root = self.root
        manifest_io.check_files(root, self.manifest)
        self._check_required()
        for path in sorted(root.rglob("*.json")):
            read_json(path, root=root)  # strict JSON, every one
        for path in sorted(root.rglob(TOKENIZER)):
            check_tokenizer(path)
        weights = [Weights.read(p.parent) for p in sorted(root.rglob(INDEX))]
        for w in weights:
            w.check(md5=True)
        libs = sorted(p for p in root.rglob("*") if p.suffix in LIBRARY_SUFFIXES and p.parent.name == "lib")
        for path in libs:
            lib = ModelLibrary.read(path)
            for w in weights:
                w.check_library(lib.metadata, path)
                self._check_recorded(w, lib, path)
            sidecar = path.with_name(path.stem + ".metadata.json")
            if sidecar.is_file() and read_json(sidecar) != lib.metadata:
                raise fail(sidecar, "differs from the _metadata embedded in the library")
        self._check_license()
        for cfg_path in root.rglob(APP_CONFIG):
            if self.manifest.get("target") == "ios":
                check_ios_app_config(cfg_path)
            else:
                check_android_app_config(cfg_path, files_dir=root)  # as the weights sit after push-weights.sh
            check_app_config(cfg_path, libs)
        packs = asset_pack.check_layout(root / asset_pack.ROOT) if (root / asset_pack.ROOT).is_dir() else None
        ggufs = sorted(root.rglob("*.gguf"))
        for gguf in ggufs:
            check_gguf(gguf)
        onnx_models = sorted(root.rglob("*.onnx"))
        for model in onnx_models:
            check_onnx(model)
        return {"package": str(root), "target": self.manifest.get("target"), "files": len(self.files),
                "weights": [str(w.dir.relative_to(root)) for w in weights],
                "libraries": [str(x.relative_to(root)) for x in libs],
                "gguf": [str(g.relative_to(root)) for g in ggufs],
                "onnx": [str(m.relative_to(root)) for m in onnx_models], "asset_packs": packs}

    def _check_required(self) -> None:
        """The files every package of its kind must have, wherever the layout puts them."""
        m, path = self.manifest, self.root / manifest_io.FILENAME
        for key in ("target", "runtime", "model_id", "quantization", "license"):
            if not m.get(key):
                raise fail(path, f"lacks '{key}'")
        listed = {f["path"] for f in self.files}
        need = [MARKER, "DEPLOY.md", NOTICE, LICENSE_JSON]
        if m["runtime"] == "onnxruntime":
            need += [f"{m['model_id']}/{name}" for name in ("model.onnx", "genai_config.json", TOKENIZER)]
        else:
            weights = [p for p in listed if p.endswith(f"{m['model_id']}/{INDEX}")]
            if not weights:
                raise fail(self.root, f"has no weights for {m['model_id']} ({INDEX} missing)")
            folder = weights[0].rsplit("/", 1)[0]
            need += [f"{folder}/{name}" for name in (CHAT_CONFIG, TOKENIZER)]
            if not any(p.endswith(f"lib/{m.get('model_lib')}.tar") for p in listed):
                raise fail(self.root, f"has no library lib/{m.get('model_lib')}.tar")
            if not any(p.endswith(APP_CONFIG) for p in listed):
                raise fail(self.root, f"has no {APP_CONFIG}")
        if m.get("gguf"):
            need.append(m["gguf"])
        for name in need:
            if name not in listed:
                raise fail(self.root / name, "is required in this package but missing")

    def _check_recorded(self, weights: Weights, lib: ModelLibrary, path: Path) -> None:
        """What the manifest says about the model agrees with the files."""
        m, where = self.manifest, self.root / manifest_io.FILENAME
        if m["quantization"] != weights.quantization.name:
            raise fail(where, f"says quantization {m['quantization']}, the weights are {weights.quantization.name}")
        if "estimated_vram_bytes" in m and m["estimated_vram_bytes"] != estimated_vram_bytes(weights, lib.metadata):
            raise fail(where, "estimated_vram_bytes does not match the weights and the library")
        if m.get("model_lib") and path.stem != m["model_lib"]:
            raise fail(where, f"names model_lib {m['model_lib']}, the package has {path.name}")

    def _check_license(self) -> None:
        for path in sorted(self.root.rglob(LICENSE_JSON)):
            shipped = read_json(path)
            recorded = self.manifest["license"]
            if any(shipped.get(k) != v for k, v in recorded.items()):
                raise fail(path, "differs from the licence recorded in manifest.json")

    def verify_apk(self, apk: Path) -> dict:
        """An APK (or split) Gradle built from this package's asset packs: model files STORED, aligned and
        byte-identical to the package."""
        prefix = asset_pack.ROOT + "/"
        expected = {}
        for f in self.files:
            parts = f["path"].split("/src/main/assets/", 1)
            if f["path"].startswith(prefix) and len(parts) == 2:
                expected[parts[1]] = (f["size"], f["sha256"])
        if not expected:
            raise fail(self.root, "has no asset packs (built without --bundle-weights)")
        return asset_pack.check_apk(Path(apk), expected)


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
        data = member(path.parent, ext.get("location"), path)
        end = int(ext.get("offset", 0)) + int(ext.get("length", 0))
        if not data.is_file() or data.stat().st_size < end:
            raise fail(data, f"external data of '{init.name}' is missing or truncated")
    genai = path.parent / "genai_config.json"
    try:
        json.loads(genai.read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(genai, f"cannot read: {e}")


def check_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception
        raise fail(path, f"cannot be loaded by tokenizers: {str(e).splitlines()[0][:120]}")


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
