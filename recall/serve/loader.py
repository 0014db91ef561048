"""How a newly published run reaches the workers: the loader (one per server) notices it, builds
it in the background and announces it; each worker follows the announcement and swaps it in.

The loader polls each job's `_LATEST` and the manifest of that date: a new date, or a new run id
for the same date (a forced rerun), is a new run once every table of it is published. It builds
the run's arrays (recall.serve.build) into `<cache>/<job>/<run_id>/`, then rewrites the job's state
file `<instance>/state-<job>.json` (atomically): the folder to serve and the record /metrics shows
(reloads, failures, load time). A run that fails to build is logged and counted there, and the
old run keeps serving; it is tried again after `RETRY_S` or when a newer run appears.

The served run's nearline overlay (recall.store.overlay) is followed the same way: a new refresh
of it, once settled, is built into `<run folder>/fresh/<refresh run_id>/` (small: the refreshed
users only) and announced beside the run; while a refresh is swapping it in, the one served stays.

The build runs in a child process (`python -m recall.serve.build`): its memory (a row group of
the table at a time, Arrow's pools) goes back to the system when it ends, and this process, the
supervisor of the workers, imports neither numpy nor pyarrow. Workers follow the state files
(recall.serve.follow).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loguru import logger

from recall.store.atomic import write_atomic
from recall.store.layout import JobDir
from recall.store.overlay import overlay_state
from recall.store.state import is_published, latest, published_dates, read_manifest

POLL_S = 1.0  # the loader's look at _LATEST and the manifests
STALE = 75  # the build's exit code when a rerun replaced the run while it was read
RETRY_S = 30.0  # a run that failed to build is tried again after this
KEEP_BUILT = 2  # built runs kept per job: the one served and the one before (workers may lag)


@dataclass
class JobState:
    """A job as the loader has it: what is announced to the workers, and its load history."""

    job: str
    date: str = ""
    run_id: str = ""
    folder: str = ""
    fresh_run_id: str = ""  # the nearline overlay served with the run ("" for none)
    fresh_folder: str = ""
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
        if want is None:
            return
        if want != (state.date, state.run_id):
            self.load_run(state, job, want)
        if want == (state.date, state.run_id):
            self.follow_overlay(state, job)

    def load_run(self, state: JobState, job: JobDir, want: tuple[str, str]) -> None:
        date, run_id = want
        if state.failing == run_id and time.time() - state.tried_at < RETRY_S:
            return
        state.tried_at = time.time()
        target = self.cache / state.job / run_id
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "recall.serve.build", str(job.root), date, run_id, str(target)],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode == STALE:  # a rerun is replacing the date right now: the next look gets it
            logger.info(f"serve {state.job}: {date} changed while loading ({last_line(done.stderr)}); loading again")
            return
        if done.returncode != 0:  # any failure keeps the old run serving
            state.failures += 1
            state.failing, state.error = run_id, last_line(done.stderr) or f"exit {done.returncode}"
            logger.error(
                f"serve {state.job}: run {run_id} of {date} failed to load; still serving "
                + (f"run {state.run_id} of {state.date}" if state.run_id else "nothing") + f": {state.error}\n"
                + done.stderr.strip()[-4000:])
            self.announce(state)
            return
        if state.run_id:
            state.reloads += 1
        state.date, state.run_id, state.folder = date, run_id, str(target)
        state.fresh_run_id = state.fresh_folder = ""  # an overlay belongs to its run: followed next
        state.loaded_at, state.load_s, state.failing, state.error = time.time(), round(seconds, 3), "", ""
        self.announce(state)
        logger.info(f"serve {state.job}: loaded run {run_id} of {date} in {seconds:.2f}s")
        self.prune(state.job, target)

    def follow_overlay(self, state: JobState, job: JobDir) -> None:
        """Build and announce the served run's newest settled overlay (or its going away)."""
        try:
            overlay, settled = overlay_state(job, state.date, state.run_id)
        except OSError as exc:
            logger.warning(f"serve {state.job}: cannot read the overlay of {state.date}: {exc}")
            return
        fresh = overlay.run_id if overlay else ""
        if not settled or fresh == state.fresh_run_id:
            return
        if state.failing == fresh and time.time() - state.tried_at < RETRY_S:
            return
        target = Path(state.folder) / "fresh" / fresh
        if fresh:
            state.tried_at = time.time()
            done = subprocess.run([sys.executable, "-m", "recall.serve.build", "--fresh", str(job.root), state.date,
                                   fresh, state.folder, str(target)], capture_output=True, text=True)
            if done.returncode == STALE:
                return
            if done.returncode != 0:
                state.failures += 1
                state.failing, state.error = fresh, last_line(done.stderr) or f"exit {done.returncode}"
                logger.error(f"serve {state.job}: the overlay {fresh} of {state.date} failed to load; still serving "
                             + (f"overlay {state.fresh_run_id}" if state.fresh_run_id else "the run without one")
                             + f": {state.error}\n" + done.stderr.strip()[-4000:])
                self.announce(state)
                return
        state.fresh_run_id, state.fresh_folder = fresh, str(target) if fresh else ""
        state.failing, state.error = "", ""
        self.announce(state)
        logger.info(f"serve {state.job}: " + (f"overlay {fresh} of {state.date} loaded" if fresh else
                                              f"no overlay for {state.date} any more"))
        if fresh:
            self.prune(state.job, target, Path(state.folder) / "fresh")

    def prune(self, job: str, keep: Path, folder: Path | None = None) -> None:
        """Drop built runs of `job` (or overlays in `folder`) but the newest KEEP_BUILT (a worker
        may still be opening the one before)."""
        folder = folder or self.cache / job
        built = sorted((p for p in folder.iterdir() if p.is_dir() and p != keep and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in built[KEEP_BUILT - 1:]:
            shutil.rmtree(old, ignore_errors=True)  # mapped files stay readable until unmapped

    def run(self, stop: threading.Event, every: float = POLL_S) -> None:
        """Look every `every` seconds until `stop` is set."""
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


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else ""
