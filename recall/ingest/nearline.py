"""Reading for the nearline refresh: the rows after a published window, and the window's rows of
the users active since, both normalised and checked as the nightly run reads its window."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recall.errors import InputError
from recall.ingest.read import FileRead, dated_files, input_path, read_files
from recall.ingest.validate import BadRows, CleanLog, validate
from recall.ingest.window import Window
from recall.spec.sections import InputSection


@dataclasses.dataclass(frozen=True)
class Source:
    """The input files a refresh reads: those after the window and those of the window."""

    path: Path
    after: list[Path]
    window: list[Path]
    partitioned: bool

    def fingerprint(self) -> str:
        """Names, sizes and modification times of every file read: equal fingerprints, equal rows."""
        digest = hashlib.sha256()
        for file in [*self.after, *self.window]:
            st = file.stat()
            digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


def locate(spec: InputSection, window: Window, root: Path) -> Source:
    """The input's files after `window` (its dt= partitions after the run date; every file when
    the input is not partitioned by day, the rows are then chosen by time) and in it."""
    path = input_path(spec, root)
    wanted = {d.isoformat() for d in window.dates()}
    run_date = window.run_date.isoformat()
    dated, partitioned = dated_files(path, lambda day: day in wanted or day > run_date)
    if partitioned:
        after = [f for f, day in dated if day is not None and day > run_date]
        in_window = [f for f, day in dated if day in wanted]
    else:
        after = in_window = [f for f, _ in dated]
    return Source(path, after, in_window, partitioned)


@dataclasses.dataclass(frozen=True)
class NewRows:
    """The valid rows after the window, and what reading them found."""

    rows: CleanLog
    bad: BadRows
    files: list[FileRead]

    @property
    def cutoff_us(self) -> int | None:
        """The newest interaction's time (None without a time column)."""
        return int(self.rows.ts.max()) if self.rows.ts is not None and self.rows.rows else None

    def to_dict(self) -> dict:
        """The overlay manifest's `input`: files and rows read, bad rows."""
        bad = self.bad.to_dict()
        return {"files": [vars(f) for f in self.files], "rows": self.bad.total_rows, "interactions": self.rows.rows,
                **{k: bad[k] for k in ("bad_rows", "bad_fraction", "duplicate_rows", "checks")}}


def rows_after(source: Source, spec: InputSection, window: Window) -> NewRows | None:
    """The valid rows after the window, with the bad-row count (exit 3 past max_bad_fraction);
    None when there are none to read. An input without dt= partitions must have a time column:
    rows timed at or after the window's end are the new ones (unparseable times are the nightly
    run's to count)."""
    if not source.after:
        return None
    end = window.bounds_us()[1]

    def after_end(piece: dict) -> np.ndarray | None:
        if source.partitioned:
            return None
        if piece["ts"] is None:
            raise InputError(f"{source.path} has neither dt= partitions nor a time column: the refresh cannot tell "
                             "the interactions after the published window from those in it",
                             hint="partition the input by dt=YYYY-MM-DD or give it a time column ([input] time_col)")
        return ~piece["ts_bad"] & (piece["ts"] >= end)

    raw = read_files(source.after, spec, after_end)
    if raw.rows == 0:
        return None
    clean, bad = validate(raw, spec)
    return NewRows(clean, bad, raw.files)


def rows_of_users(source: Source, spec: InputSection, window: Window, users: pa.Array) -> CleanLog | None:
    """The window's valid rows of `users` (the input read again, only their rows kept), cleaned
    by the same row checks; never refused for its bad rows, which the nightly run accepted."""
    if not source.window:
        return None
    lo, hi = window.bounds_us()

    def theirs(piece: dict) -> np.ndarray:
        if piece["user"].type != users.type:
            raise InputError(f"id type changes: user ids are {users.type} after the window but {piece['user'].type} "
                             f"in the window's files under {source.path}")
        mask = np.asarray(pc.is_in(piece["user"], value_set=users).to_numpy(zero_copy_only=False), dtype=bool)
        if not source.partitioned and piece["ts"] is not None:
            mask &= piece["ts_bad"] | ((piece["ts"] >= lo) & (piece["ts"] < hi))
        return mask

    raw = read_files(source.window, spec, theirs)
    if raw.rows == 0:
        return None
    clean, _ = validate(raw, dataclasses.replace(spec, max_bad_fraction=1.0))
    return clean
