"""iOS package: an LLMFarm folder (GGUF + chat settings) and the MLC side (Metal library + bundle)."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.compiler.library import ModelLibrary, tar_members
from mcpm_mobile.formats import llmfarm
from mcpm_mobile.formats.gguf_export import export_gguf
from mcpm_mobile.formats.mlc_app import APP_CONFIG, ios_app_config
from mcpm_mobile.formats.weights import Weights
from mcpm_mobile.model import chat_format
from mcpm_mobile.model.checkpoint import Checkpoint
from mcpm_mobile.support.ar import write_archive
from mcpm_mobile.support.output import Output
from mcpm_mobile.target import Target

MLC = "mlc"
GGUF_TYPE = "q4_0"


def mlc_paths(stage: Path, model_id: str) -> tuple[Path, Path]:
    """(weights dir, lib dir) of the MLC half: ``mlc/bundle/<model_id>/`` and ``mlc/lib/``."""
    return stage / MLC / "bundle" / model_id, stage / MLC / "lib"


def package(stage: Path, target: Target, ckpt: Checkpoint, weights: Weights, lib: ModelLibrary, vram: int,
            out: Output = Output()) -> dict:
    """The MLC bundle's app config and static archive, and the LLMFarm folder with a GGUF of ``ckpt``."""
    model_id = weights.dir.name
    write_archive(lib.path.with_name(target.static_lib), tar_members(lib.path))
    (weights.dir.parent / APP_CONFIG).write_text(json.dumps(ios_app_config(model_id, lib.name, vram), indent=2))
    name = model_id.removesuffix("-MLC") + f"-{GGUF_TYPE}"
    gguf = stage / target.assets / "models" / f"{name}.gguf"
    summary = export_gguf(ckpt, gguf, GGUF_TYPE, out=out)
    fmt = chat_format.from_conv_template(weights.chat_config["conv_template"])  # as quantized, thinking included
    llmfarm.write_settings(stage / target.assets, gguf.name, ckpt.config, context=weights.context_window_size,
                           name=name, chat_format=fmt)
    return {"gguf": str(gguf.relative_to(stage)), "gguf_bytes": summary["bytes"], "assets": target.assets}
