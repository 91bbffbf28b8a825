"""SIGTERM and SIGHUP end a command the way Ctrl-C does: temporary output removed, one line, 128+N."""
from __future__ import annotations

import contextlib
import signal
import threading

CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when one of :data:`CAUGHT` arrives."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def raised_as_interrupts():
    """For the duration, the signals in :data:`CAUGHT` raise :class:`Interrupted`; yields the list of
    signals received (a C extension may swallow the exception, the list still tells)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in CAUGHT}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
