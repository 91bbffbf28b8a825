"""A clean launcher: ``python -S bench/launch.py RESULT_JSON -- CMD ...`` runs CMD and writes its wall time and
its own peak RSS to RESULT_JSON.

Why a launcher: Linux carries a process's RSS high-water mark across fork and exec (``exec_mmap`` stores the
old address space's hiwater in ``signal->maxrss``), so ``ru_maxrss`` of a child forked by a large parent (the
bench, after generating a checkpoint) reports the parent's peak. This launcher is a bare interpreter (no site,
no imports beyond ``os``/``sys``/``time``): the child it forks starts from its few MB, and the ``ru_maxrss``
that ``wait4`` returns is the child's own peak (and its descendants', the maximum, not the sum).
"""
import os
import sys
import time


def main() -> None:
    result, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--" and cmd, __doc__
    floor_kb = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                floor_kb = int(line.split()[1])
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    with open(result, "w") as f:
        f.write('{"seconds": %.3f, "peak_rss_mb": %.1f, "launcher_rss_mb": %.1f, "returncode": %d}'
                % (seconds, usage.ru_maxrss / 1024, floor_kb / 1024, os.waitstatus_to_exitcode(status)))
    sys.exit(0)


if __name__ == "__main__":
    main()
