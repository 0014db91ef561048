"""Test-only pause points for the crash tests (tests/test_reliability_crash.py); inert by default.

With RECALL_TEST_PAUSE_AT=<point> in the environment, a run that reaches that point says so on
stderr and sleeps, so a test can SIGKILL it at a moment no timing could hit (between a table's
data and its _SUCCESS, between two tables, between the manifest and _LATEST). Never set it in
production: the run would stall there for ten minutes.
"""
from __future__ import annotations

import os
import sys
import time

ENV = "RECALL_TEST_PAUSE_AT"


def pause_point(point: str) -> None:
    """Stall here if RECALL_TEST_PAUSE_AT names this point; otherwise do nothing."""
    if os.environ.get(ENV) != point:
        return
    print(f"recall: test pause at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
    time.sleep(600)
