"""A job folder a run can trust: no symbolic link leads a write or a delete out of it, and state
files that hold garbage are rebuilt from what is on disk (or set aside), saying so.

Called by a run under the job's lock, before it reads any state: `check_links` refuses (exit 5)
and `repair` recovers. Readers (`recall status`, `read_table`) never write: they read around a
bad file (recall.store.state) and say what is wrong.
"""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from recall.errors import OutputError
from recall.store.atomic import write_atomic
from recall.store.layout import MANIFESTS, STAGING, SUCCESS, TABLES, JobDir, data_files
from recall.store.records import Manifest, TableInfo, to_json
from recall.store.state import (manifest_dates, manifest_problem, marker_problem, published_dates, read_latest,
                                read_manifest, read_marker)

CORRUPT = ".corrupt"  # a corrupt manifest is kept beside the rebuilt one as dt=D.json.corrupt


def check_links(job: JobDir) -> None:
    """Refuse a symbolic link anywhere a run writes, renames or deletes: the job folder's entries
    (_lock, _staging, _history.jsonl, _LATEST, _manifest, the tables), the manifests, the table
    partitions and the staging folders. (The job folder itself may be a link: that is where the
    operator put it.)"""
    for path in watched(job):
        if path.is_symlink():
            target = os.readlink(path)
            raise OutputError(
                f"refusing to use {path}: it is a symbolic link (to {target}), and a run writes, renames and "
                f"deletes only inside {job.root}",
                hint="remove the link (nothing was written) and rerun the date")


def watched(job: JobDir):
    if not job.root.is_dir():
        return
    for child in sorted(job.root.iterdir()):
        yield child
        if child.is_symlink() or not child.is_dir():
            continue
        if child.name in (MANIFESTS, STAGING) or not child.name.startswith(("_", ".")):
            yield from sorted(child.iterdir())


def repair(job: JobDir) -> list[str]:
    """Rebuild what holds garbage, from what is on disk; returns one line per thing done.

    - a manifest that is not a manifest: rebuilt from the _SUCCESS markers of the date's tables
      (the u2i table's run, and every table of that run), its metrics lost; the bad file is kept
      as dt=D.json.corrupt. Without a u2i marker the date is not published: the bad file is set
      aside the same way.
    - a table's _SUCCESS that is not a marker, in a date whose manifest lists the table:
      rewritten from the manifest when the partition holds exactly the files and rows the
      manifest lists (else left, and said: the date is not published).
    - _LATEST holding anything but the date of a manifest: rewritten as the newest published
      date (removed when nothing is published).
    """
    done = []
    for date in manifest_dates(job):
        problem = manifest_problem(job, date)
        if problem is None:
            continue
        path = job.manifest(date)
        os.replace(path, path.with_name(path.name + CORRUPT))
        rebuilt = rebuild_manifest(job, date, problem)
        if rebuilt is not None:
            write_atomic(path, to_json(rebuilt))
            done.append(f"{problem}: rebuilt from the _SUCCESS markers of its tables "
                        f"({', '.join(rebuilt.tables)}, run {rebuilt.run_id}), without its metrics; "
                        f"the bad file is kept as {path.name}{CORRUPT}")
        else:
            done.append(f"{problem}, and no u2i table of {date} to rebuild it from: {date} is not published "
                        f"(the bad file is kept as {path.name}{CORRUPT})")
    done += repair_markers(job)
    date, problem = read_latest(job)
    if problem is not None:
        dates = published_dates(job)
        if dates:
            write_atomic(job.latest_file, dates[-1] + "\n")
            done.append(f"{problem}: rewritten as {dates[-1]}, the newest published date")
        else:
            job.latest_file.unlink(missing_ok=True)
            done.append(f"{problem}: removed, nothing is published")
    return done


def repair_markers(job: JobDir) -> list[str]:
    done = []
    for date in manifest_dates(job):
        manifest = read_manifest(job, date)
        for table, info in (manifest.tables.items() if manifest else ()):
            problem = marker_problem(job, table, date)
            if problem is None:
                continue
            folder = job.partition(table, date)
            found = {p.name: pq.ParquetFile(p).metadata.num_rows for p in data_files(folder)}
            if found != info.files:
                done.append(f"{problem}, and the partition does not hold the files the manifest lists: {date} is not "
                            f"published (rerun it with --force)")
                continue
            write_atomic(folder / SUCCESS, json.dumps({"run_id": manifest.run_id, "rows": info.rows,
                                                       "files": info.files}, indent=1) + "\n")
            done.append(f"{problem}: rebuilt from the manifest of {date} (run {manifest.run_id}, {info.rows} rows "
                        f"in {len(info.files)} file(s), as the partition holds)")
    return done


def rebuild_manifest(job: JobDir, date: str, why: str) -> Manifest | None:
    """The manifest a date's _SUCCESS markers vouch for: the run of its u2i table, and the tables
    of that run (rows and files from the markers); None without a u2i marker."""
    u2i = read_marker(job, "u2i", date)
    if u2i is None:
        return None
    tables = {}
    for table in [t for t in TABLES if t in job.tables()] + [t for t in job.tables() if t not in TABLES]:
        marker = read_marker(job, table, date) if job.partition(table, date).is_dir() else None
        if marker is not None and marker.run_id == u2i.run_id:
            tables[table] = TableInfo(marker.rows, marker.files)
    return Manifest(job=job.name, date=date, run_id=u2i.run_id, tables=tables, rebuilt=why)
