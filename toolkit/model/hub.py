"""Hugging Face Hub ids as checkpoints: ``openbmb/MiniCPM4-0.5B`` or ``openbmb/MiniCPM4-0.5B@<revision>``.

Downloads go through ``huggingface_hub`` (``snapshot_download``), so its cache (``HF_HOME``/``HF_HUB_CACHE``),
resumable downloads, offline mode (``HF_HUB_OFFLINE=1``), token (``HF_TOKEN``) and endpoint (``HF_ENDPOINT``)
work as everywhere else. Only what a command reads is fetched: config, generation config, tokenizer files,
model card and licence, and one weight format (safetensors when the repo has them, else PyTorch ``.bin``).
A local directory always wins over a repo id of the same spelling.
"""
from __future__ import annotations

import re
from pathlib import Path

from mcpm_mobile.errors import MCPMError
from mcpm_mobile.support.output import Output

META = ["config.json", "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json", "README.md", "LICENSE", "LICENSE.*"]
SAFETENSORS = ["*.safetensors", "model.safetensors.index.json"]
PYTORCH = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
_REPO = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})(@(?P<rev>[^\s@]{1,200}))?$")
_CACHE_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``text`` is spelled like a Hub model id, else None."""
    m = _REPO.match(str(text))
    if m is None or ".." in m.group("repo") or m.group("repo").endswith((".", "-")):
        return None
    return m.group("repo"), m.group("rev")


def repo_id_of(path: Path | str) -> str | None:
    """The repo id of a directory inside huggingface_hub's cache (``models--org--name/snapshots/<sha>``)."""
    p = Path(path).resolve()
    if p.parent.name != "snapshots":
        return None
    m = _CACHE_DIR.match(p.parent.parent.name)
    return f"{m.group('org')}/{m.group('name')}" if m else None


def checkpoint_dir(arg: Path | str, out: Output = Output(), weights: bool = True) -> Path:
    """``arg`` as a local checkpoint directory: itself when it exists (or is not a repo id), else the snapshot
    of the Hub repo it names, downloaded as needed (``weights=False``: the configs and tokenizer only)."""
    path = Path(arg)
    parsed = parse_repo_id(str(arg))
    if path.exists() or parsed is None:
        return path
    return download(*parsed, out=out, weights=weights)


def download(repo_id: str, revision: str | None = None, out: Output = Output(), weights: bool = True) -> Path:
    """Fetch what mcpm-mobile reads of ``repo_id`` into the huggingface_hub cache; returns the snapshot dir."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError:  # a dependency; only a broken install gets here
        raise MCPMError(f"{repo_id}: huggingface_hub is not installed (pip install huggingface_hub)")
    what = repo_id + (f"@{revision}" if revision else "")
    if out.quiet or out.json:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        out.info(f"Fetching {what} from the Hugging Face Hub (config, tokenizer{', weights' if weights else ''})")
        snapshot = Path(huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                          allow_patterns=META + (SAFETENSORS if weights else [])))
        if weights and not any(snapshot.glob("*.safetensors")):
            snapshot = Path(huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                              allow_patterns=META + PYTORCH))
    except hf_errors.GatedRepoError:
        raise MCPMError(f"{what}: the repository is gated; accept its terms on the Hub and set HF_TOKEN")
    except hf_errors.RepositoryNotFoundError:
        raise MCPMError(f"{what}: no such model repository on the Hub (or it is private: set HF_TOKEN)")
    except hf_errors.RevisionNotFoundError:
        raise MCPMError(f"{what}: no such revision")
    except hf_errors.LocalEntryNotFoundError as e:
        status = getattr(getattr(e.__cause__, "response", None), "status_code", None)
        why = f"the Hub answered HTTP {status}" if status else "the Hub cannot be reached (HF_HUB_OFFLINE is set, or no network)"
        raise MCPMError(f"{what}: not in the local Hugging Face cache and {why}")
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise MCPMError(f"{what}: the Hub answered HTTP {status or 'error'}")
    except Exception as e:  # noqa: BLE001 - the network boundary: httpx errors, a full disk, a bad HF_ENDPOINT
        detail = str(e).splitlines()[0][:120] if str(e) else ""
        raise MCPMError(f"{what}: download failed ({type(e).__name__}: {detail}); run the command again to resume")
    if not (snapshot / "config.json").is_file():
        raise MCPMError(f"{what}: the repository has no config.json (not a Hugging Face checkpoint)")
    return snapshot
