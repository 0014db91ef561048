"""How many threads a job may use: resolved once per run and passed to what runs in parallel."""
from __future__ import annotations

import os


def job_threads(requested: int) -> int:
    """Threads a job may use: the spec's count, or every core this process may run on."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
