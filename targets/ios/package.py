"""iOS package: an LLMFarm folder (GGUF + chat settings) and the MLC side (Metal library + bundle)."""
from __future__ import annotations

import json
from pathlib import Path

from mcpm_mobile.model.config import MiniCPMConfig
from mcpm_mobile.support.ar import write_archive
from mcpm_mobile.support.output import Output
from mcpm_mobile.targets import app_config as app_configs
from mcpm_mobile.targets.model_lib import tar_members

STATIC_LIB = "libmodel_iphone.a"
LLMFARM = "llmfarm"
MLC = "mlc"


def mlc_paths(stage: Path, model_id: str) -> tuple[Path, Path]:
    """(weights dir, lib dir) of the MLC half: ``mlc/bundle/<model_id>/`` and ``mlc/lib/``."""
    return stage / MLC / "bundle" / model_id, stage / MLC / "lib"


def package(stage: Path, model_dir: Path, config: MiniCPMConfig, model_id: str, model_lib: str, vram: int,
            context: int, gguf_type: str = "q4_0", out: Output = Output()) -> dict:
    from mcpm_mobile.formats.gguf_export import export_gguf
    from mcpm_mobile.targets.ios import llmfarm

    _, lib_dir = mlc_paths(stage, model_id)
    write_archive(lib_dir / STATIC_LIB, tar_members(lib_dir / f"{model_lib}.tar"))
    (stage / MLC / "bundle" / app_configs.FILENAME).write_text(
        json.dumps(app_configs.ios(model_id, model_lib, vram), indent=2))
    name = model_id.removesuffix("-MLC") + f"-{gguf_type}"
    gguf = stage / LLMFARM / "models" / f"{name}.gguf"
    summary = export_gguf(model_dir, gguf, type=gguf_type, out=out)
    llmfarm.write_settings(stage / LLMFARM, gguf.name, config, context=context, name=name)
    return {"gguf": str(gguf.relative_to(stage)), "gguf_bytes": summary["bytes"], "llmfarm": LLMFARM}
