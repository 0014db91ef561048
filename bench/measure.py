"""Wall time, CPU time and peak resident memory per step; the run's own step timings inside each.

Peak memory per step: Linux lets a process reset its RSS high-water mark (VmHWM) by writing 5 to
/proc/self/clear_refs, so each step's peak is its own, not the run's so far.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from recall.timer import Timer

_STATUS = "/proc/self/status"


def _status_mb(key: str) -> float:
    with open(_STATUS, encoding="ascii") as fh:
        match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def reset_peak() -> bool:
    """Start a new high-water mark at the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


@dataclass
class Step:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_start_mb: float = 0.0
    peak_rss_mb: float = 0.0
    inside: dict[str, float] = field(default_factory=dict)  # wall seconds inside wrapped functions
    inside_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds (all threads) inside them
    note: str = ""

    def to_dict(self) -> dict:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}
        for key in ("inside", "inside_cpu"):
            out[key] = {name: round(v, 3) for name, v in out[key].items()}
        return out


@dataclass
class Recorder:
    """Steps in the order they ran; what the run's own Timer recorded during a step is its `inside`."""

    timer: Timer = field(default_factory=Timer)
    steps: list[Step] = field(default_factory=list)
    exact_peaks: bool = True

    @contextmanager
    def step(self, name: str, note: str = "") -> Iterator[Step]:
        step = Step(name, note=note)
        self.exact_peaks &= reset_peak()
        step.rss_start_mb = rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        before, before_cpu = dict(self.timer.timings), dict(self.timer.cpu)
        try:
            yield step
        finally:
            step.wall_s = time.perf_counter() - wall
            step.cpu_s = time.process_time() - cpu
            step.peak_rss_mb = peak_rss_mb()
            for key, value in self.timer.timings.items():
                if value != before.get(key, 0.0) and "." not in key:
                    step.inside[key] = value - before.get(key, 0.0)
                    step.inside_cpu[key] = self.timer.cpu[key] - before_cpu.get(key, 0.0)
            self.steps.append(step)

    def get(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cores() -> int:
    return len(os.sched_getaffinity(0))
