"""GGUF export time and peak RSS for one checkpoint, printed as one JSON object.

    python bench/gguf_export.py CHECKPOINT_DIR [--type q4_0] [--flavor minicpm] [-o FILE.gguf]

Without -o the GGUF goes to a temporary file next to the checkpoint and is deleted afterwards.
Make a MiniCPM-2B-shaped checkpoint with ``python bench/checkpoint.py DIR``.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

from mcpm_mobile.formats.gguf_export import FLAVOR_ARCH, TYPES, export_gguf


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--type", default="q4_0", choices=list(TYPES))
    ap.add_argument("--flavor", default="minicpm", choices=list(FLAVOR_ARCH))
    ap.add_argument("-o", "--output", type=Path, help="keep the GGUF here instead of deleting it")
    args = ap.parse_args()
    before = peak_rss_bytes()
    with tempfile.TemporaryDirectory(prefix=".gguf-bench-", dir=args.model_dir.resolve().parent) as tmp:
        summary = export_gguf(args.model_dir, args.output or Path(tmp) / "model.gguf", args.type, args.flavor,
                              force=True)
    peak = peak_rss_bytes()
    print(json.dumps({
        "checkpoint": str(args.model_dir), "type": args.type, "flavor": args.flavor,
        "seconds": summary["seconds"], "peak_rss_bytes": peak, "peak_rss_mb": round(peak / 2**20, 1),
        "rss_before_export_mb": round(before / 2**20, 1), "input_bytes": summary["input_bytes"],
        "output_bytes": summary["bytes"], "params": summary["params"], "bits_per_param": summary["bits_per_param"],
        "input_mb_per_s": round(summary["input_bytes"] / summary["seconds"] / 2**20, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
