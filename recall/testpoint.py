"""Test-only pause points for the crash tests (tests/test_reliability_crash.py); inert by default.

With RECALL_TEST_PAUSE_AT=<point> in the environment, a run that reaches that point says so on
stderr and waits, so a test can SIGKILL it at a moment no timing could hit (between a table's
data and its _SUCCESS, between two tables, between the manifest and _LATEST), or change the
world (fill the disk) and resume it with SIGUSR1. Never set it in production: the run would
stall there for ten minutes.
"""
from __future__ import annotations

import os
import signal
import sys
import time

ENV = "RECALL_TEST_PAUSE_AT"


_paused: set[str] = set()


def pause_point(point: str) -> None:
    """Stall here, the first time only, if RECALL_TEST_PAUSE_AT names this point; else nothing."""
    if os.environ.get(ENV) != point or point in _paused:
        return
    _paused.add(point)
    resumed: list[int] = []
    # a handler, not a blocked signal: SIGUSR1 may land on any thread (BLAS, OpenMP), and its
    # default action would end the process; the handler always runs in the main thread
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: resumed.append(signum))
    print(f"recall: test pause at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 600
    while not resumed and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGUSR1 resumes the run, SIGKILL ends it
    signal.signal(signal.SIGUSR1, previous)
