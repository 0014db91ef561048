"""Staging, streamed Parquet writing, atomic publish, manifest, _LATEST and retention.

Layout under <output.path>/<job>/ (DESIGN.md):
    <table>/dt=D/part-NNNNN.parquet, <table>/dt=D/_SUCCESS   published partitions
    _manifest/dt=D.json                                      one manifest per published date
    _LATEST                                                  newest fully published date
    _staging/<run_id>/<table>/dt=D/                          a run's work in progress
A partition appears by one rename (or an atomic exchange with the old one), so a reader sees
either the complete old or the complete new partition, never a mix. The manifest is the commit
point: until it is written, the partitions a run replaced wait in its staging folder, and a run
that dies in between is undone by the next one (`recover`).
"""
from __future__ import annotations

import ctypes
import datetime as dt
import errno
import json
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recall.errors import OutputError
from recall.testpoint import pause_point

SUCCESS = "_SUCCESS"
MANIFESTS = "_manifest"
LATEST = "_LATEST"
STAGING = "_staging"
TABLES = ("u2i", "i2i", "popular")  # every table a run may publish
JOURNAL = "_PUBLISHING"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass
class JobDir:
    """Paths of one job's output folder."""

    root: Path  # <output.path>/<job>

    def partition(self, table: str, date: str) -> Path:
        return self.root / table / f"dt={date}"

    def manifest(self, date: str) -> Path:
        return self.root / MANIFESTS / f"dt={date}.json"

    @property
    def latest_file(self) -> Path:
        return self.root / LATEST

    def staging(self, run_id: str) -> Path:
        return self.root / STAGING / run_id


# --- writing ---------------------------------------------------------------------


@dataclass
class TableWriter:
    """Streams record batches into part files of one staged partition, in row groups."""

    folder: Path
    schema: pa.Schema
    max_rows_per_file: int
    row_group_rows: int
    compression: str = "zstd"
    first_part: int = 0  # number of the first part file (see next_part)
    rows: int = 0
    files: dict[str, int] = field(default_factory=dict)
    _writer: pq.ParquetWriter | None = None
    _file_rows: int = 0
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0
    # one writer thread: encoding and compressing a row group (Arrow releases the GIL) overlaps
    # with computing the next batch; at most one group is in flight, so memory stays bounded
    _pool: ThreadPoolExecutor | None = None
    _inflight: Future | None = None

    def write(self, table: pa.Table) -> None:
        table = table.cast(self.schema) if table.schema != self.schema else table
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._wait()
            data = pa.concat_tables(self._pending)
            self._pending, self._pending_rows = [], 0
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
            self._inflight = self._pool.submit(self._write_rows, data)

    def _wait(self) -> None:
        """Finish the row group in flight; its error (e.g. disk full) is raised here."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    def _flush(self) -> None:
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._pending:
            data = pa.concat_tables(self._pending)
            self._pending, self._pending_rows = [], 0
            self._write_rows(data)

    def _write_rows(self, data: pa.Table) -> None:
        offset = 0
        while offset < data.num_rows:
            if self._writer is None or self._file_rows >= self.max_rows_per_file:
                self._open_next()
            take = min(data.num_rows - offset, self.max_rows_per_file - self._file_rows)
            self._writer.write_table(data.slice(offset, take), row_group_size=self.row_group_rows)
            self._file_rows += take
            self.files[self._current] = self._file_rows
            self.rows += take
            offset += take

    def _open_next(self) -> None:
        self._close_current()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._current = f"part-{self.first_part + len(self.files):05d}.parquet"
        # dictionary pages only for text columns (source, string ids): on ids and scores they cost
        # time and buy nothing next to zstd
        text = [f.name for f in self.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        self._writer = pq.ParquetWriter(self.folder / self._current, self.schema,
                                        compression=None if self.compression == "none" else self.compression,
                                        use_dictionary=text or False)
        self._file_rows = 0
        self.files[self._current] = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            fsync_file(self.folder / self._current)
            self._writer = None

    def close(self, run_id: str) -> dict:
        """Flush, close, and write _SUCCESS (what the partition holds) into the staged folder."""
        self._flush()
        if not self.files:
            self._open_next()  # an empty table still gets one part file, so readers see its schema
        self._close_current()
        pause_point("before-success")
        marker = {"run_id": run_id, "rows": self.rows, "files": self.files}
        write_atomic(self.folder / SUCCESS, json.dumps(marker, indent=1) + "\n")
        fsync_dir(self.folder)
        return marker


def next_part(final: Path) -> int:
    """The first part number for a new run of the partition at `final`: after the numbers its
    current files use, so that a reader that listed the old files and opens them after the swap
    gets "not found", never a file of the new run in place of one of the old."""
    numbers = [int(p.name[5:-8]) for p in final.glob("part-*.parquet") if p.name[5:-8].isdigit()]
    return max(numbers) + 1 if numbers else 0


# --- publishing ------------------------------------------------------------------


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


def recover(job: JobDir) -> list[str]:
    """Settle publishes that a run began and did not finish (killed, or failed half-way).

    A run whose manifest is in place committed: only _LATEST may lag, and it is moved. Any
    other run's partitions are swapped back out, so its date is exactly as before that run.
    Call under the job's lock, before clearing staging (which holds the previous partitions).
    """
    folder = job.root / STAGING
    settled = []
    for run in sorted(folder.iterdir()) if folder.is_dir() else []:
        note = read_json(run / JOURNAL)
        if not note:
            continue
        date, run_id = note["date"], note["run_id"]
        if (read_manifest(job, date) or {}).get("run_id") == run_id:
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


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_atomic(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the file, not the temporary
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- state -----------------------------------------------------------------------


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_manifest(job: JobDir, date: str) -> dict | None:
    return read_json(job.manifest(date))


def is_published(job: JobDir, date: str) -> bool:
    """Every table the manifest lists carries _SUCCESS of the manifest's run."""
    manifest = read_manifest(job, date)
    if not manifest:
        return False
    for table in manifest.get("tables", {}):
        marker = read_json(job.partition(table, date) / SUCCESS)
        if not marker or marker.get("run_id") != manifest.get("run_id"):
            return False
    return True


def latest(job: JobDir) -> str | None:
    try:
        text = job.latest_file.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def published_dates(job: JobDir) -> list[str]:
    """Dates with a manifest whose tables are all published, oldest first."""
    folder = job.root / MANIFESTS
    if not folder.is_dir():
        return []
    dates = sorted(p.name[3:-5] for p in folder.glob("dt=*.json"))
    return [d for d in dates if is_published(job, d)]


def set_latest(job: JobDir, date: str) -> str:
    """_LATEST names the newest fully published date (a backfill of an old date leaves it)."""
    current = latest(job)
    newest = max(date, current) if current and is_published(job, current) else date
    write_atomic(job.latest_file, newest + "\n")
    return newest


def clear_staging(job: JobDir) -> list[str]:
    """Remove staging folders and temporary files left by crashed runs (call only while holding
    the job's lock); a folder whose publish is not settled (see `recover`) is kept: it holds the
    previous data."""
    for stale in [*job.root.glob(".*.tmp-*"), *(job.root / MANIFESTS).glob(".*.tmp-*")]:
        stale.unlink(missing_ok=True)  # a write_atomic cut short by a kill
    folder = job.root / STAGING
    if not folder.is_dir():
        return []
    removed = []
    for child in folder.iterdir():
        if (child / JOURNAL).exists():
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        removed.append(child.name)
    return removed


def retire(job: JobDir, keep_days: int, tables: list[str], run_id: str) -> list[str]:
    """Drop dates older than keep_days before _LATEST (never _LATEST's own date)."""
    newest = latest(job)
    if not newest:
        return []
    cutoff = (dt.date.fromisoformat(newest) - dt.timedelta(days=keep_days - 1)).isoformat()
    dates = set()
    for table in tables:
        folder = job.root / table
        if folder.is_dir():
            dates.update(p.name[3:] for p in folder.glob("dt=*") if p.is_dir())
    folder = job.root / MANIFESTS
    if folder.is_dir():
        dates.update(p.name[3:-5] for p in folder.glob("dt=*.json"))
    trash = job.staging(run_id) / "retired"
    removed = []
    for date in sorted(d for d in dates if d < cutoff and d != newest):
        job.manifest(date).unlink(missing_ok=True)
        for table in tables:
            part = job.partition(table, date)
            if part.exists():
                trash.mkdir(parents=True, exist_ok=True)
                target = trash / f"{table}-{date}"
                os.rename(part, target)  # vanishes whole, then is deleted out of sight
                shutil.rmtree(target, ignore_errors=True)
        removed.append(date)
    return removed


def output_error(exc: OSError, where: Path) -> OutputError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OutputError(f"cannot write output under {where}: {reason}" + (f" ({exc.filename})" if exc.filename else ""))
