"""A worker's side of a reload: the snapshot of each job, swapped when the loader announces a new
run (recall.serve.loader). A worker checks the state files' stat every FOLLOW_S; on a change it
opens the announced folder (memory maps, milliseconds) off the event loop and swaps the job's
snapshot in one assignment, so a request that began keeps the run it started with.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from loguru import logger

from recall.serve.loader import state_file
from recall.serve.snapshot import Snapshot
from recall.store.atomic import read_json

FOLLOW_S = 0.2  # a worker's look at the state files


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
        """Read the job's state; the snapshot to swap in when it names a new run or a new nearline
        overlay of the run (else None)."""
        path = state_file(self.instance, job)
        st = path.stat()
        state = read_json(path)
        if state is None:
            return None
        current = self.snapshots.get(job)
        fresh = None
        if state.get("folder") and (current is None or current.run_id != state["run_id"]):
            fresh = Snapshot.open(Path(state["folder"]))
        base = fresh or current
        overlay = state.get("fresh_run_id") or ""
        if base is not None and base.fresh_run_id != overlay:
            fresh = base.with_fresh(Path(state["fresh_folder"]) if overlay else None)
        self.states[job] = state
        self._seen[job] = (st.st_mtime_ns, st.st_size)
        return fresh

    def skip(self, job: str) -> None:
        """Take the job's current state file as seen (it failed to open: wait for the next one)."""
        try:
            st = state_file(self.instance, job).stat()
            self._seen[job] = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            pass

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
                except Exception as exc:  # noqa: BLE001 - keep serving the old run until the next announcement
                    logger.warning(f"serve {job}: could not open the announced run, still serving the one before: {exc}")
                    self.skip(job)
                    continue
                if fresh is not None:
                    self.snapshots[job] = fresh  # the swap: requests that began keep their own
            await asyncio.sleep(every)
