"""Request counters every worker adds to and any worker reports, in Prometheus text.

Each worker owns one slot file (claimed with flock, so a restarted worker takes a free slot and
keeps counting in it) holding a fixed float64 vector: requests by job, endpoint and status, a
latency histogram by endpoint, and fallbacks by job. /metrics sums every slot, so a scrape gets
the whole server whichever worker answers it. Writing a counter is one array add, no lock.
"""
from __future__ import annotations

import fcntl
import itertools
import os
from pathlib import Path

import numpy as np

ENDPOINTS = ("u2i", "u2i_foldin", "i2i", "popular", "healthz", "metrics", "other")
CODES = (200, 400, 404, 405, 413, 500, 503)
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0)  # seconds
NO_JOB = ""


class Layout:
    """Where each counter lives in a slot's vector (the same for every worker of a server)."""

    def __init__(self, jobs: list[str]) -> None:
        self.jobs = [NO_JOB, *jobs]
        self.requests = {key: i for i, key in enumerate(itertools.product(self.jobs, ENDPOINTS, CODES))}
        base = len(self.requests)
        width = len(BUCKETS) + 2  # the buckets, +Inf, and the sum
        self.latency = {endpoint: base + i * width for i, endpoint in enumerate(ENDPOINTS)}
        base += len(ENDPOINTS) * width
        self.fallback = {job: base + i for i, job in enumerate(jobs)}
        self.size = base + len(jobs)
        self.bounds = np.array(BUCKETS)


class Counters:
    """This worker's slot, and the sum of all slots."""

    def __init__(self, folder: Path, layout: Layout, slots: int = 256) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.layout = folder, layout
        for slot in range(slots):
            path = folder / f"slot-{slot}.bin"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd = fd  # held for the worker's life: the slot is ours
            if os.fstat(fd).st_size != layout.size * 8:
                os.ftruncate(fd, layout.size * 8)
            self.values = np.memmap(path, np.float64, "r+", shape=(layout.size,)).view(np.ndarray)
            return
        raise RuntimeError(f"no free metrics slot under {folder}")

    def request(self, job: str, endpoint: str, code: int, seconds: float) -> None:
        layout, values = self.layout, self.values
        values[layout.requests.get((job, endpoint, code), layout.requests[(NO_JOB, "other", 500)])] += 1
        base = layout.latency[endpoint]
        values[base + int(np.searchsorted(layout.bounds, seconds))] += 1
        values[base + len(BUCKETS) + 1] += seconds

    def fell_back(self, job: str) -> None:
        self.values[self.layout.fallback[job]] += 1

    def totals(self) -> np.ndarray:
        total = np.zeros(self.layout.size)
        for path in self.folder.glob("slot-*.bin"):
            if path.stat().st_size == self.layout.size * 8:
                total += np.fromfile(path, np.float64)
        return total


def code_of(status: int) -> int:
    return status if status in CODES else 500


def text(counters: Counters, loaded: list[dict]) -> str:
    """Prometheus text format 0.0.4. `loaded`: per job, what this worker serves and the loader's
    record (reloads, failures, load time)."""
    layout, total = counters.layout, counters.totals()
    out = ["# HELP recall_serve_requests_total Requests answered, by job, endpoint and status.",
           "# TYPE recall_serve_requests_total counter"]
    for (job, endpoint, code), i in layout.requests.items():
        if total[i]:
            out.append(f'recall_serve_requests_total{{job="{job}",endpoint="{endpoint}",code="{code}"}} {total[i]:.0f}')
    out += ["# HELP recall_serve_request_seconds Time to answer, inside the application.",
            "# TYPE recall_serve_request_seconds histogram"]
    for endpoint, base in layout.latency.items():
        counts = np.cumsum(total[base:base + len(BUCKETS) + 1])
        if not counts[-1]:
            continue
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts):
            out.append(f'recall_serve_request_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {count:.0f}')
        out.append(f'recall_serve_request_seconds_sum{{endpoint="{endpoint}"}} {total[base + len(BUCKETS) + 1]:.6f}')
        out.append(f'recall_serve_request_seconds_count{{endpoint="{endpoint}"}} {counts[-1]:.0f}')
    out += ["# HELP recall_serve_fallback_total u2i answers for unknown users, from the popular list.",
            "# TYPE recall_serve_fallback_total counter"]
    out += [f'recall_serve_fallback_total{{job="{job}"}} {total[i]:.0f}' for job, i in layout.fallback.items()]
    gauges = [
        ("recall_serve_loaded_info", "gauge", "The run each job is served from (1), by date and run id.",
         lambda j: (f'job="{j["job"]}",date="{j["date"]}",run_id="{j["run_id"]}"', 1) if j.get("run_id") else None),
        ("recall_serve_fresh_info", "gauge", "The nearline overlay served with each job's run (1), by refresh run id.",
         lambda j: (f'job="{j["job"]}",run_id="{j["fresh_run_id"]}"', 1) if j.get("fresh_run_id") else None),
        ("recall_serve_loaded_timestamp_seconds", "gauge", "When the served run was loaded.",
         lambda j: (f'job="{j["job"]}"', j["loaded_at"]) if j.get("loaded_at") else None),
        ("recall_serve_load_seconds", "gauge", "How long building the served run took.",
         lambda j: (f'job="{j["job"]}"', j["load_s"]) if j.get("run_id") else None),
        ("recall_serve_reloads_total", "counter", "Runs loaded and swapped in after the first.",
         lambda j: (f'job="{j["job"]}"', j.get("reloads", 0))),
        ("recall_serve_reload_failures_total", "counter", "Published runs that failed to load (the old one kept serving).",
         lambda j: (f'job="{j["job"]}"', j.get("failures", 0))),
        ("recall_serve_reload_failing", "gauge", "1 while the newest published run fails to load.",
         lambda j: (f'job="{j["job"]}"', 1 if j.get("failing") else 0)),
    ]
    for name, kind, help_text, sample in gauges:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for job in loaded:
            value = sample(job)
            if value is not None:
                out.append(f"{name}{{{value[0]}}} {value[1]}")
    return "\n".join(out) + "\n"
