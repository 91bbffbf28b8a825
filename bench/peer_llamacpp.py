"""llama.cpp's own conversion path, the peer for our quantizer: ``convert_hf_to_gguf.py`` to f16, then its
quantizer to Q4_0. Both come from the llama-cpp-python 0.3.36 source distribution, fetched at run time into
``bench/out/peer`` (never committed); the converter runs in its own venv with torch (CPU) and transformers.
Run ``--prepare`` first (untimed set-up); then each step is timed as its own process (``measure.run``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from measure import run

SDIST = "llama_cpp_python-0.3.36"
PEER_PACKAGES = ["torch==2.13.0", "transformers==4.57.6", "sentencepiece", "numpy<2.3", "protobuf<5", "pyyaml"]


def prepare(work: Path) -> tuple[Path, Path]:
    """(python of the peer venv, llama.cpp source dir), created once."""
    src = work / SDIST / "vendor" / "llama.cpp"
    if not (src / "convert_hf_to_gguf.py").is_file():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python==0.3.36", "-d", str(work)], check=True)
        with tarfile.open(work / f"{SDIST}.tar.gz") as tf:
            keep = [m for m in tf.getmembers() if m.name.startswith(f"{SDIST}/vendor/llama.cpp/") and
                    ("/conversion/" in m.name or "/gguf-py/" in m.name or m.name.endswith("convert_hf_to_gguf.py"))]
            tf.extractall(work, members=keep, filter="data")
    venv = work / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python, src


def quantize_q4_0(f16: Path, out: Path, threads: int) -> None:
    """llama.cpp's quantizer (``llama_model_quantize``, what ``llama-quantize`` calls), via llama-cpp-python."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "out" / "peer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prepare", action="store_true", help="only fetch the converter and build its venv (set-up, "
                                                            "run untimed before any measurement)")
    ap.add_argument("--quantize-only", nargs=2, type=Path, metavar=("F16", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quantize_only:
        quantize_q4_0(*args.quantize_only, args.threads)
        return
    python, src = prepare(args.work)
    if args.prepare:
        return
    f16, q4 = args.work / "peer-f16.gguf", args.work / "peer-q4_0.gguf"
    convert = run([python, src / "convert_hf_to_gguf.py", args.checkpoint, "--outtype", "f16", "--outfile", f16])
    quant = run([sys.executable, __file__, args.checkpoint, "--threads", args.threads, "--quantize-only", f16, q4])
    f16.unlink()
    convert.pop("stdout"), quant.pop("stdout")
    print(json.dumps({"convert_f16": convert, "quantize_q4_0": quant, "gguf": str(q4), "gguf_bytes": q4.stat().st_size,
                      "seconds": round(convert["seconds"] + quant["seconds"], 2),
                      "peak_rss_mb": max(convert["peak_rss_mb"], quant["peak_rss_mb"])}))


if __name__ == "__main__":
    main()
