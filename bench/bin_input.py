"""Conversion from a PyTorch ``.bin`` checkpoint beside the same weights in safetensors: speed and peak RSS.

    python bench/bin_input.py [--small] [--rounds 2] [--out bench/out]

Makes (or reuses) the bench checkpoint of bench/checkpoint.py, writes its ``.bin`` twin once (the same tensors
in torch.save's archive layout, ``pytorch_model.bin``), then times ``mcpm-mobile quantize`` on each input in
fresh processes, alternating safetensors/.bin for ``--rounds`` rounds: wall time and peak RSS of the quantize
process only (set-up is outside the measured process). Prints one JSON object with every round, the medians
and the .bin/safetensors ratios. The twin needs as much free disk as the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from checkpoint import checkpoint_bytes, make  # noqa: E402
from measure import run_json  # noqa: E402

CLI = Path(sys.executable).parent / "mcpm-mobile"


def bin_twin(ckpt: Path, out: Path) -> Path:
    """``out``: the files of ``ckpt`` with its safetensors weights rewritten as ``pytorch_model.bin``."""
    from mcpm_mobile.support import pytorch_bin, safetensors_io

    if (out / "pytorch_model.bin").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".index.json"):
            shutil.copy(f, out / f.name)
    infos = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        infos.update(safetensors_io.read_header(f))
    specs = {n: (i.shape, safetensors_io.DTYPES[i.dtype]) for n, i in infos.items()}
    tmp = out / "pytorch_model.bin.partial"
    pytorch_bin.write_stream(tmp, specs, lambda n: safetensors_io.load(infos[n]), root="pytorch_model")
    tmp.rename(out / "pytorch_model.bin")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a 0.5B shape for a quick look")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    shape = "0.5b" if args.small else "2b"
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt, twin = out / f"ckpt-{shape}", out / f"ckpt-{shape}-bin"
    free = shutil.disk_usage(out).free
    need = checkpoint_bytes(shape) * (1.4 + (0 if twin.is_dir() else 1) + (0 if ckpt.is_dir() else 1))
    if free < need:
        sys.exit(f"bench: needs {need / 1e9:.1f} GB free disk in {out}, {free / 1e9:.1f} GB available")
    make(ckpt, shape)
    bin_twin(ckpt, twin)
    env = {"TVM_NUM_THREADS": str(args.threads)}
    rounds = []
    for i in range(args.rounds):
        row = {}
        for label, src in (("safetensors", ckpt), ("bin", twin)) if i % 2 == 0 else (("bin", twin), ("safetensors", ckpt)):
            r = run_json([CLI, "quantize", src, "-o", out / f"w-{shape}-{label}", "--force", "--json"], env)
            row[label] = {k: r[k] for k in ("seconds", "peak_rss_mb", "input_gb_per_s", "bytes")}
        rounds.append(row)
    med = {label: {k: statistics.median(r[label][k] for r in rounds) for k in ("seconds", "peak_rss_mb")}
           for label in ("safetensors", "bin")}
    print(json.dumps({
        "shape": shape, "threads": args.threads, "input_gb": round(checkpoint_bytes(shape) / 1e9, 2),
        "rounds": rounds, "median": med,
        "bin_over_safetensors": {k: round(med["bin"][k] / med["safetensors"][k], 3) for k in ("seconds", "peak_rss_mb")},
        "same_output": all(r["bin"]["bytes"] == r["safetensors"]["bytes"] for r in rounds),
    }, indent=2))


if __name__ == "__main__":
    main()
