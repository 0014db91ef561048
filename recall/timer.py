"""Wall and CPU time of each step of a run, logged as it ends and kept for the manifest.

Steps nest: a step opened inside another is recorded as "outer.inner" (e.g. "train.als_fit"),
so the manifest and the log show where the time inside a step went. A step entered many times
(once per batch) adds up; `quiet` ones are not logged each time.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from loguru import logger

from recall.errors import stop_if_signalled


@dataclass
class Timer:
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of all the process's threads
    _open: list[str] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, quiet: bool = False) -> Iterator[None]:
        stop_if_signalled()
        full = ".".join([*self._open, name])
        self._open.append(name)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._open.pop()
            self.timings[full] = round(self.timings.get(full, 0.0) + time.perf_counter() - wall, 4)
            self.cpu[full] = round(self.cpu.get(full, 0.0) + time.process_time() - cpu, 4)
        if not quiet:
            logger.info(f"step {full} done in {self.timings[full]:.2f}s")
        stop_if_signalled()

    def top(self) -> dict[str, float]:
        """The outermost steps only (their sum is the run's time)."""
        return {k: v for k, v in self.timings.items() if "." not in k}
