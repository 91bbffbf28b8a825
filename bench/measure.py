"""Run a command in a fresh process through ``bench/launch.py`` and measure that process only: wall time and
its own peak RSS (not the bench's: see launch.py). Set-up (venvs, checkpoints) is never run through here."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCH = Path(__file__).resolve().parent / "launch.py"


def run(cmd: list, env: dict | None = None) -> dict:
    """Returns ``{"seconds", "peak_rss_mb", "stdout"}``; raises with the stderr tail if the command fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "measure.json"
        subprocess.run([sys.executable, "-S", "-E", str(LAUNCH), str(result), "--", *[str(c) for c in cmd]],
                       stdout=out, stderr=err, env={**os.environ, **(env or {})}, check=True)
        m = json.loads(result.read_text())
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if m["returncode"]:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({m['returncode']}): {stderr[-2000:]}")
    return {"seconds": round(m["seconds"], 2), "peak_rss_mb": m["peak_rss_mb"],
            "launcher_rss_mb": m["launcher_rss_mb"], "stdout": stdout}


def run_json(cmd: list, env: dict | None = None) -> dict:
    """``run`` a command whose stdout ends with one JSON object. The command's own figures win, except
    ``seconds`` and ``peak_rss_mb``, which are always the launcher's measurement of the whole process (the
    command's own ``seconds``, if any, is kept as ``inner_seconds``)."""
    r = run(cmd, env)
    text = r.pop("stdout").rstrip()
    start = text.rfind("\n{")
    inner = json.loads(text[start + 1 if start >= 0 else 0:])
    if "seconds" in inner:
        inner["inner_seconds"] = inner.pop("seconds")
    inner.pop("peak_rss_mb", None)
    return {**inner, **r}


def spread(values: list[float], higher_is_better: bool = True) -> dict:
    """Best, median and the spread (min..max) of repeated measurements."""
    v = sorted(values)
    return {"best": v[-1] if higher_is_better else v[0], "median": round(statistics.median(v), 3),
            "min": v[0], "max": v[-1], "n": len(v)}
