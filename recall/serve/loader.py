"""How a newly published run reaches the workers: the loader (one per server) notices it, builds
it in the background and announces it; each worker follows the announcement and swaps it in.

The loader polls each job's `_LATEST` and the manifest of that date: a new date, or a new run id
for the same date (a forced rerun), is a new run once every table of it is published. It builds
the run's arrays (recall.serve.build) into `<cache>/<job>/<run_id>/`, then rewrites the job's state
file `<instance>/state-<job>.json` (atomically): the folder to serve and the record /metrics shows
(reloads, failures, load time). A run that fails to build is logged and counted there, and the
old run keeps serving; it is tried again after `RETRY_S` or when a newer run appears.

A worker checks the state files' stat every `FOLLOW_S`; on a change it opens the announced folder
(memory maps, milliseconds) off the event loop and swaps the job's snapshot in one assignment.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loguru import logger

from recall.serve.build import StaleRun, build
from recall.serve.snapshot import Snapshot
from recall.store.atomic import read_json, write_atomic
from recall.store.layout import JobDir
from recall.store.state import is_published, latest, published_dates, read_manifest

POLL_S = 1.0  # the loader's look at _LATEST and the manifests
FOLLOW_S = 0.2  # a worker's look at the state files
RETRY_S = 30.0  # a run that failed to build is tried again after this
KEEP_BUILT = 2  # built runs kept per job: the one served and the one before (workers may lag)


@dataclass
class JobState:
    """A job as the loader has it: what is announced to the workers, and its load history."""

    job: str
    date: str = ""
    run_id: str = ""
    folder: str = ""
    loaded_at: float = 0.0
    load_s: float = 0.0
    reloads: int = 0
    failures: int = 0
    failing: str = ""  # the run that failed to load, while it is the newest
    error: str = ""
    tried_at: float = 0.0


def newest_run(job: JobDir, fallback: bool) -> tuple[str, str] | None:
    """The (date, run_id) `_LATEST` names once all its tables are published; None meanwhile (a
    publish settles in milliseconds). With `fallback` (nothing served yet), the newest complete
    date when `_LATEST`'s is not."""
    date = latest(job)
    manifest = read_manifest(job, date) if date else None
    if manifest is not None and is_published(job, date):
        return date, manifest.run_id
    if fallback:
        for date in reversed(published_dates(job)):
            manifest = read_manifest(job, date)
            if manifest is not None:
                return date, manifest.run_id
    return None


class Loader:
    """Builds and announces the newest run of every job."""

    def __init__(self, jobs: dict[str, JobDir], cache: Path, instance: Path) -> None:
        self.jobs, self.cache, self.instance = jobs, cache, instance
        instance.mkdir(parents=True, exist_ok=True)
        self.states = {name: JobState(name) for name in jobs}
        for state in self.states.values():
            self.announce(state)

    def state_file(self, job: str) -> Path:
        return state_file(self.instance, job)

    def announce(self, state: JobState) -> None:
        write_atomic(self.state_file(state.job), json.dumps(asdict(state)) + "\n")

    def check(self) -> None:
        for name, job in self.jobs.items():
            self.check_job(self.states[name], job)

    def check_job(self, state: JobState, job: JobDir) -> None:
        try:
            want = newest_run(job, fallback=not state.run_id)
        except OSError as exc:
            logger.warning(f"serve {state.job}: cannot read {job.root}: {exc}")
            return
        if want is None or want == (state.date, state.run_id):
            return
        date, run_id = want
        if state.failing == run_id and time.time() - state.tried_at < RETRY_S:
            return
        state.tried_at = time.time()
        target = self.cache / state.job / run_id
        try:
            seconds = build(job, date, run_id, target)
            Snapshot.open(target)  # what every worker will do: fail here, not there
        except StaleRun as exc:  # a rerun is replacing the date right now: the next look gets it
            logger.info(f"serve {state.job}: {date} changed while loading ({exc}); loading again")
            return
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old run serving
            state.failures += 1
            state.failing, state.error = run_id, f"{type(exc).__name__}: {exc}"
            logger.opt(exception=exc).error(
                f"serve {state.job}: run {run_id} of {date} failed to load; still serving "
                + (f"run {state.run_id} of {state.date}" if state.run_id else "nothing") + f": {state.error}")
            self.announce(state)
            return
        if state.run_id:
            state.reloads += 1
        state.date, state.run_id, state.folder = date, run_id, str(target)
        state.loaded_at, state.load_s, state.failing, state.error = time.time(), round(seconds, 3), "", ""
        self.announce(state)
        logger.info(f"serve {state.job}: loaded run {run_id} of {date} in {seconds:.2f}s")
        self.prune(state.job, target)

    def prune(self, job: str, keep: Path) -> None:
        """Drop built runs of `job` but the newest KEEP_BUILT (a worker may still be opening the one before)."""
        built = sorted((p for p in (self.cache / job).iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in built[KEEP_BUILT - 1:]:
            shutil.rmtree(old, ignore_errors=True)  # mapped files stay readable until unmapped

    def run(self, stop: threading.Event, every: float = POLL_S) -> None:
        while not stop.wait(every):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the loader must outlive one bad look
                logger.opt(exception=exc).error(f"serve: loader check failed: {exc}")

    def start(self, every: float = POLL_S) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop, every), name="recall-serve-loader", daemon=True)
        thread.start()
        return thread, stop


def state_file(instance: Path, job: str) -> Path:
    return instance / f"state-{job}.json"


class Follower:
    """A worker's side: the snapshot of each job, swapped when the loader announces a new run."""

    def __init__(self, instance: Path, jobs: list[str]) -> None:
        self.instance, self.jobs = instance, jobs
        self.snapshots: dict[str, Snapshot] = {}
        self.states: dict[str, dict] = {job: {"job": job} for job in jobs}
        self._seen: dict[str, tuple[int, int]] = {}

    def changed(self) -> list[str]:
        out = []
        for job in self.jobs:
            try:
                st = state_file(self.instance, job).stat()
            except FileNotFoundError:
                continue
            if self._seen.get(job) != (st.st_mtime_ns, st.st_size):
                out.append(job)
        return out

    def refresh(self, job: str) -> Snapshot | None:
        """Read the job's state; the snapshot to swap in when it names a new run (else None)."""
        path = state_file(self.instance, job)
        st = path.stat()
        state = read_json(path)
        if state is None:
            return None
        current = self.snapshots.get(job)
        fresh = None
        if state.get("folder") and (current is None or current.run_id != state["run_id"]):
            fresh = Snapshot.open(Path(state["folder"]))
        self.states[job] = state
        self._seen[job] = (st.st_mtime_ns, st.st_size)
        return fresh

    def follow_once(self) -> None:
        """Synchronously (tests, the single-process start)."""
        for job in self.changed():
            fresh = self.refresh(job)
            if fresh is not None:
                self.snapshots[job] = fresh

    async def follow(self, every: float = FOLLOW_S) -> None:
        while True:
            for job in self.changed():
                try:
                    fresh = await asyncio.to_thread(self.refresh, job)
                except Exception as exc:  # noqa: BLE001 - keep serving the old run; retried next look
                    logger.warning(f"serve {job}: could not open the announced run: {exc}")
                    continue
                if fresh is not None:
                    self.snapshots[job] = fresh  # the swap: requests that began keep their own
            await asyncio.sleep(every)
