"""The commit protocol: how a run's staged tables become published, in one place for every
caller (the nightly run of every engine, the nearline refresh, the benchmark, the tests).

1. Stage: writers put a table's files into `_staging/<run>/<table>/dt=D/` (any names: ours,
   Spark's `part-00000-<uuid>...`; Hadoop's empty `_SUCCESS` and `.crc` files are dropped).
2. Seal: the files are renamed into the `part-NNNNN` order after those of the partition they
   will replace, and our `_SUCCESS` (run id, rows, files) is written, all synced.
3. Publish: a journal is written, then each partition appears by one rename, or one atomic
   exchange with the old one, which waits in staging; then the manifest, the commit point;
   then `_LATEST`; then retention.
4. Recover: a run that died before its manifest is undone, by itself or by the job's next run
   (the old partitions are swapped back); one that died after it only gets its `_LATEST`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from loguru import logger

from recall.errors import OutputError
from recall.store.atomic import exchange, fsync_dir, fsync_file, read_json, write_atomic
from recall.store.layout import JOURNAL, NAMED, SUCCESS, JobDir, data_files, next_part, part_name
from recall.store.records import Manifest, Marker, to_json
from recall.store.state import is_published, latest, manifest_dates, read_latest
from recall.testpoint import pause_point
from recall.timer import Timer

if TYPE_CHECKING:
    from recall.store.overlay import FreshManifest


@dataclass(frozen=True)
class Publication:
    """One run's publish of one date of a job."""

    job: JobDir
    run_id: str
    date: str

    def folder(self, table: str) -> Path:
        """Where the run stages `table` (created)."""
        folder = self.job.staged(self.run_id, table, self.date)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def seal(self, table: str) -> Marker:
        """Number the staged files after the partition they replace (the item side keeps its
        names) and write our _SUCCESS."""
        return seal(self.folder(table), self.job.partition(table, self.date), self.run_id, keep_names=table in NAMED)

    def publish(self, manifest: Manifest | FreshManifest, keep_days: int, timer: Timer | None = None
                ) -> tuple[str, list[str]]:
        """Publish every table of `manifest` (sealed), then the manifest, `_LATEST`, retention
        (each where `self.job` keeps them: the nearline overlay's lane has its own, see
        recall.store.overlay).
        Returns the newest published date and the dates retired. On any failure the date is put
        back as it was before raising (OutputError for an OSError). The time the tables take to
        appear is the `publish` step of `timer`, recorded in the manifest."""
        timer = timer or Timer()
        stage = "publish"  # then "latest" once the manifest (the commit point) is written, then "retire"
        try:
            with timer.step("publish"):
                begin_publish(self.job, self.run_id, self.date, list(manifest.tables))
                for table in manifest.tables:
                    publish_partition(self.job.staged(self.run_id, table, self.date),
                                      self.job.partition(table, self.date))
                    pause_point(f"published-{table}")
            manifest = dataclasses.replace(manifest, timings={**manifest.timings, **timer.timings})
            write_atomic(self.job.manifest(self.date), to_json(manifest))  # the commit point
            stage = "latest"
            pause_point("before-latest")
            newest = set_latest(self.job, self.date)  # only now, after every table and the manifest
            end_publish(self.job, self.run_id)
            stage = "retire"
            return newest, retire(self.job, keep_days, self.run_id)
        except BaseException as exc:
            if stage != "publish":  # committed: the date is published; only _LATEST or retention is behind
                if isinstance(exc, OSError):
                    raise after_commit_error(exc, self.job, self.date, stage) from None
                raise
            undone = True
            try:
                settle(self.job, console=False)  # put back the partitions this run replaced
            except OSError as undo:  # its journal stays, and the next run tries again
                undone = False
                logger.bind(console=False).error(f"could not undo the unfinished publish: {undo}")
            if isinstance(exc, OSError):
                error = output_error(exc, self.job.root)
                if not undone:
                    error.hint = (f"{self.date} was not published, but the partitions this run had swapped in could "
                                  "not all be taken back out yet: the job's next run does it (readers that check "
                                  "_SUCCESS against the manifest are not misled meanwhile); free space or fix "
                                  "permissions and rerun the date")
                raise error from None
            raise


def seal(staged: Path, final: Path, run_id: str, keep_names: bool = False) -> Marker:
    """Rename a staged partition's data files into part-NNNNN order after `final`'s, drop other
    writers' markers and hidden files, and write our _SUCCESS listing exactly the files.

    With `keep_names` every file keeps its name (a format of named files, like the item side:
    Parquet files count their rows, other files 0); readers then open the partition through one
    directory handle and check the run id, since a rerun reuses the names."""
    for other in staged.iterdir():
        if other.is_file() and (other.name.startswith((".", "_")) or other.suffix == ".crc"):
            other.unlink()  # Hadoop's empty _SUCCESS, Spark's .crc checksums, our old marker
    files: dict[str, int] = {}
    if keep_names:
        for path in data_files(staged, any_kind=True):
            files[path.name] = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else 0
            fsync_file(path)
    first = next_part(final)
    for number, path in enumerate([] if keep_names else data_files(staged), start=first):
        name = part_name(number)
        rows = pq.ParquetFile(path).metadata.num_rows
        if path.name != name:
            os.rename(path, staged / f".{name}.sealing")  # via a hidden name: never two files one name
        files[name] = rows
    for name in files:
        hidden = staged / f".{name}.sealing"
        if hidden.exists():
            os.rename(hidden, staged / name)
    pause_point("before-success")
    marker = Marker(run_id, sum(files.values()), files)
    write_atomic(staged / SUCCESS, json.dumps({"run_id": run_id, "rows": marker.rows, "files": files}, indent=1) + "\n")
    fsync_dir(staged)
    return marker


def publish_partition(staged: Path, final: Path) -> None:
    """Make `staged` visible at `final` in one step. An older `final` is swapped into `staged`,
    where it waits until the run commits (its manifest is written) and staging is cleared, or
    is swapped back by `recover` if the run dies first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(staged, final)
    elif not exchange(staged, final):
        # no atomic exchange on this file system: a brief gap, but never a mix
        old = aside(staged)
        os.rename(final, old)
        os.rename(staged, final)
        os.rename(old, staged)
    fsync_dir(final.parent)


def aside(staged: Path) -> Path:
    return staged.with_name(staged.name + ".old")


def begin_publish(job: JobDir, run_id: str, date: str, tables: list[str]) -> None:
    """Journal, in the run's staging folder, what the run is about to publish (see `recover`)."""
    note = {"run_id": run_id, "date": date, "tables": tables}
    write_atomic(job.staging(run_id) / JOURNAL, json.dumps(note) + "\n")


def end_publish(job: JobDir, run_id: str) -> None:
    """The run's publish is complete: its staging folder may go."""
    (job.staging(run_id) / JOURNAL).unlink(missing_ok=True)


def set_latest(job: JobDir, date: str) -> str:
    """_LATEST names the newest fully published date (a backfill of an old date leaves it)."""
    current = latest(job)
    newest = max(date, current) if current and is_published(job, current) else date
    if read_latest(job) != (newest, None):  # a rerun of the latest date leaves the file as it is
        write_atomic(job.latest_file, newest + "\n")
    return newest


def recover(job: JobDir) -> list[str]:
    """Settle publishes that a run began and did not finish (killed, or failed half-way).

    A run whose manifest is in place committed: only _LATEST may lag, and it is moved. Any
    other run's partitions are swapped back out, so its date is exactly as before that run.
    Call under the job's lock, before clearing staging (which holds the previous partitions).
    """
    folder = job.staging_root
    settled = []
    for run in sorted(folder.iterdir()) if folder.is_dir() else []:
        note = read_json(run / JOURNAL)
        if not note:
            continue
        date, run_id = note["date"], note["run_id"]
        manifest = read_json(job.manifest(date)) or {}
        if manifest.get("run_id") == run_id:
            set_latest(job, date)
            settled.append(f"run {run_id} of {date} died after its manifest: _LATEST brought up to date")
        else:
            for table in note["tables"]:
                unpublish(run / table / f"dt={date}", job.partition(table, date), run_id)
            settled.append(f"run {run_id} of {date} died while publishing: the previous partitions are back")
        (run / JOURNAL).unlink()
    return settled


def unpublish(staged: Path, final: Path, run_id: str) -> None:
    """Put back what `publish_partition(staged, final)` replaced, wherever it was interrupted."""
    marker = read_json(final / SUCCESS) or {}
    if marker.get("run_id") == run_id:  # this run's partition is visible: take it away
        if staged.exists():  # the previous partition waits in staging
            if not exchange(staged, final):
                os.rename(final, staged.with_name(staged.name + ".new"))
                os.rename(staged, final)
        else:
            os.rename(final, staged)
    if not final.exists() and aside(staged).exists():  # killed inside the fallback swap
        os.rename(aside(staged), final)
    fsync_dir(final.parent)


def settle(job: JobDir, console: bool = True) -> list[str]:
    """Undo (or finish) publishes that did not complete, saying so; returns what was done."""
    done = recover(job)
    for what in done:
        logger.bind(console=console).warning(what)
    return done


def clear_staging(job: JobDir) -> list[str]:
    """Remove staging folders and temporary files left by crashed runs (call only while holding
    the job's lock); a folder whose publish is not settled (see `recover`) is kept: it holds the
    previous data."""
    for stale in [*job.home.glob(".*.tmp-*"), *job.manifest_dir.glob(".*.tmp-*")]:
        stale.unlink(missing_ok=True)  # a write_atomic cut short by a kill
    folder = job.staging_root
    if folder.is_symlink() or not folder.is_dir():  # a planted link: never delete through it
        return []
    removed = []
    for child in folder.iterdir():
        if (child / JOURNAL).exists():
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        removed.append(child.name)
    return removed


def retire(job: JobDir, keep_days: int, run_id: str) -> list[str]:
    """Drop dates older than keep_days before _LATEST (never _LATEST's own date), in every table."""
    newest = latest(job)
    if not newest:
        return []
    cutoff = (dt.date.fromisoformat(newest) - dt.timedelta(days=keep_days - 1)).isoformat()
    tables = job.tables()
    dates = set(manifest_dates(job))
    for table in tables:
        dates.update(p.name[3:] for p in (job.root / table).glob("dt=*") if p.is_dir())
    trash = job.staging(run_id) / "retired"
    removed = []
    for date in sorted(d for d in dates if d < cutoff and d != newest):
        job.manifest(date).unlink(missing_ok=True)
        job.manifest(date).with_name(f"dt={date}.json.corrupt").unlink(missing_ok=True)  # see store.repair
        for table in tables:
            part = job.partition(table, date)
            if part.exists():
                trash.mkdir(parents=True, exist_ok=True)
                target = trash / f"{table}-{date}"
                os.rename(part, target)  # vanishes whole, then is deleted out of sight
                shutil.rmtree(target, ignore_errors=True)
        removed.append(date)
    return removed


def after_commit_error(exc: OSError, job: JobDir, date: str, stage: str) -> OutputError:
    """What to say when a run fails after its manifest was written: the date *is* published."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    if stage == "latest":
        readers = latest(job)
        return OutputError(
            f"{date} is published (its tables and manifest are in place) but {job.latest_file} could not be "
            f"moved to it: {reason}{where}; readers that follow _LATEST still get "
            + (readers if readers and readers != date else "nothing"),
            hint=f"fix space or permissions under {job.root}: the job's next run moves _LATEST "
                 "(the date need not be rerun)")
    return OutputError(f"{date} is published, but retention could not remove old dates: {reason}{where}",
                       hint=f"fix permissions under {job.root}: the job's next run retires them")


def output_error(exc: OSError, where: Path) -> OutputError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OutputError(f"cannot write output under {where}: {reason}" + (f" ({exc.filename})" if exc.filename else ""))
