"""Run a command in a fresh process and measure it: wall time and peak RSS (from ``os.wait4``)."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time


def run(cmd: list, env: dict | None = None) -> dict:
    """Returns ``{"seconds", "peak_rss_mb", "stdout"}``; raises with the stderr tail if the command fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": stdout}


def run_json(cmd: list, env: dict | None = None) -> dict:
    """``run`` a command whose stdout ends with one JSON object; merge it with the measurements."""
    r = run(cmd, env)
    text = r.pop("stdout").rstrip()
    start = text.rfind("\n{")
    return {**json.loads(text[start + 1 if start >= 0 else 0:]), **r}
