"""Reader API for downstream: a published recall table as a pandas DataFrame.

Only published partitions are read (named by _LATEST or having a manifest and _SUCCESS of the
same run), and exactly the files their _SUCCESS lists, through one open handle on the
partition folder, so a rerun swapping the partition mid-read cannot mix two runs.

u2i is read with the nearline overlay of its date (recall.store.overlay) when there is one: a
refreshed user's rows come from `u2i_fresh`, every other user's from the nightly table
(`fresh=False`: the nightly rows alone).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recall.spec.sections import JOB_NAME_RE
from recall.store.layout import SUCCESS, TABLES, JobDir
from recall.store.overlay import U2I_FRESH, overlay_state
from recall.store.state import is_published, latest, manifest_problem, published_dates as dates_of, read_manifest

SETTLE_S = 2.0  # how long a date whose tables and manifest disagree is waited for


def output_root(output: str | Path) -> Path:
    """Where the jobs' folders are: `output` (a job spec's [output] path) when absolute; a
    relative one, the default data/recall included, from $RECALL_ROOT when it is set (the
    project folder, as for the command line), else from the current folder."""
    path = Path(output)
    root = os.environ.get("RECALL_ROOT")
    return path if path.is_absolute() or not root else Path(root) / path


def output_text(output: str | Path) -> str:
    """The output folder for a message, with how a relative one was found."""
    path = output_root(output)
    if Path(output).is_absolute():
        return str(path)
    if os.environ.get("RECALL_ROOT"):
        return f"{path} ($RECALL_ROOT + {output})"
    return (f"{path.resolve()} ({output} from the current folder; set RECALL_ROOT to the project folder, or pass "
            "output= the job's [output] path)")


def published_dates(job: str, output: str | Path = "data/recall") -> list[str]:
    """Dates of `job` whose tables are all published, oldest first."""
    return dates_of(JobDir(output_root(output) / job))


def read_table(job: str, table: str = "u2i", date: str | None = None, output: str | Path = "data/recall",
               columns: list[str] | None = None, fresh: bool = True) -> pd.DataFrame:
    """The `table` of `job` for `date` (default: the newest published date, from _LATEST).

    `output` is the job spec's [output] path; a relative one is taken from $RECALL_ROOT when set,
    else from the current folder. u2i comes with the date's nearline overlay: a user refreshed
    since the nightly run gets their fresh rows (`fresh=False`: the nightly rows only);
    `u2i_fresh` is the overlay alone. Raises LookupError when nothing is published.
    """
    return read_arrow(job, table, date, output, columns, fresh=fresh).to_pandas()


def read_arrow(job: str, table: str = "u2i", date: str | None = None, output: str | Path = "data/recall",
               columns: list[str] | None = None, where: pc.Expression | None = None, fresh: bool = True) -> pa.Table:
    """As read_table, as Arrow; `where` keeps matching rows only (row groups pruned by statistics,
    e.g. `pc.field("user_id").isin(ids)` on the user-sorted u2i table)."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    if not JOB_NAME_RE.match(job):
        raise ValueError(f"bad job name {job!r}: letters, digits, '_' and '-' only")
    if date is not None:
        dt.date.fromisoformat(date)  # a date, not a path: ValueError otherwise
    out = JobDir(output_root(output) / job)
    chosen = date or latest(out)
    deadline = time.monotonic() + SETTLE_S
    while chosen and (manifest := read_manifest(out, chosen)) is not None:
        if is_published(out, chosen):
            if table not in manifest.tables and table != U2I_FRESH:
                raise LookupError(f"{job} {chosen} has no table {table!r} (tables: {', '.join(manifest.tables)})")
            try:
                return read_run(out, table, chosen, manifest.run_id, columns, where, fresh)
            except FileNotFoundError:
                pass  # swapped between listing and opening: read again
        elif time.monotonic() > deadline:
            break
        else:
            time.sleep(0.02)  # a rerun is publishing this date: it settles in milliseconds
        chosen = date or latest(out)
    problem = manifest_problem(out, chosen) if chosen else None
    if date is None:
        # the newest date is half-republished by a run that died, or its manifest holds garbage
        # (the job's next run puts it back, or rebuilds it): serve the newest complete date
        # meanwhile, never a mix
        dates = published_dates(job, output)
        if dates:
            if problem:
                warnings.warn(f"{job}: {problem}; serving {dates[-1]}, the newest date that reads whole (the job's "
                              "next run rebuilds the manifest)", RuntimeWarning, stacklevel=3)
            return read_run(out, table, dates[-1], read_manifest(out, dates[-1]).run_id, columns, where, fresh)
    if problem:
        raise LookupError(f"{job} {chosen} cannot be read: {problem}; the job's next run rebuilds it from its "
                          "tables' _SUCCESS markers (or rerun the date with --force)")
    if not chosen:
        raise LookupError(f"nothing published for job {job} under {output_text(output)}")
    raise LookupError(f"{job} {chosen} is not published under {output_text(output)}")


def read_run(out: JobDir, table: str, date: str, run_id: str, columns: list[str] | None,
             where: pc.Expression | None, fresh: bool) -> pa.Table:
    """`table` of the nightly run `run_id` of `date`; u2i with the run's overlay unless not `fresh`."""
    if table == U2I_FRESH:
        overlay = settled_overlay(out, date, run_id)
        if overlay is None:
            raise LookupError(f"{out.name} {date} has no u2i_fresh overlay of its nightly run {run_id}")
        return read_partition(out.partition(U2I_FRESH, date), columns, where, overlay.run_id)
    if table != "u2i" or not fresh:
        return read_partition(out.partition(table, date), columns, where, run_id)
    keys = None if columns is None else list(dict.fromkeys([*columns, "user_id", "rank"]))
    nightly = read_partition(out.partition(table, date), keys, where, run_id)
    overlay = settled_overlay(out, date, run_id)
    if overlay is not None:
        nightly = prefer_fresh(nightly, read_partition(out.partition(U2I_FRESH, date), keys, where, overlay.run_id))
    return nightly if columns is None else nightly.select(columns)


def settled_overlay(out: JobDir, date: str, run_id: str):
    """The overlay of the nightly run `run_id` of `date`, waiting while a refresh swaps it in;
    None when there is none (or one left half swapped by a refresh that died: the nightly rows
    meanwhile, never a mix)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        overlay, settled = overlay_state(out, date, run_id)
        if settled or time.monotonic() > deadline:
            return overlay
        time.sleep(0.02)


def prefer_fresh(nightly: pa.Table, fresh: pa.Table) -> pa.Table:
    """What a reader of u2i gets: each user of the overlay with their fresh rows, every other user
    with the nightly rows; sorted by user, then rank (both tables hold user_id and rank)."""
    if fresh.num_rows == 0:
        return nightly
    replaced = pc.is_in(nightly["user_id"], value_set=pc.unique(fresh["user_id"].combine_chunks()))
    kept = nightly.filter(pc.invert(replaced))
    merged = pa.concat_tables([kept, fresh.select(kept.column_names).cast(kept.schema)])
    return merged.take(pc.sort_indices(merged, [("user_id", "ascending"), ("rank", "ascending")]))


class Replaced(FileNotFoundError):
    """The partition holds another run than the one chosen: replaced meanwhile, read again."""


def read_partition(folder: Path, columns: list[str] | None, where: pc.Expression | None = None,
                   run_id: str | None = None) -> pa.Table:
    """The files _SUCCESS lists, through one handle on `folder`; of run `run_id` when given."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        marker = json.loads(read_at(fd, SUCCESS))
        if run_id is not None and marker.get("run_id") != run_id:
            raise Replaced(f"{folder} holds run {marker.get('run_id')}, not {run_id}")
        parts = []
        for name in marker["files"]:
            handle = os.open(name, os.O_RDONLY, dir_fd=fd)
            with os.fdopen(handle, "rb") as fh:
                parts.append(pq.read_table(fh, columns=columns, filters=where))
        table = pa.concat_tables(parts)
        if where is None and table.num_rows != marker["rows"]:
            raise RuntimeError(f"{folder}: read {table.num_rows} rows, _SUCCESS says {marker['rows']}")
        return table
    finally:
        os.close(fd)


def read_at(dir_fd: int, name: str) -> bytes:
    handle = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(handle, "rb") as fh:
        return fh.read()
