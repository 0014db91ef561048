"""What is published: manifests, markers, _LATEST, read without ever writing.

A state file that holds garbage (a disk fault, a hand edit) never stops a reader: `latest`
falls back on the newest published date, and `read_latest` / `manifest_problem` say what is
wrong, for `recall status` and for the repair a run does under its lock (recall.store.repair).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path

from recall.store.atomic import read_json
from recall.store.layout import SUCCESS, JobDir
from recall.store.records import Manifest, Marker


def read_manifest(job: JobDir, date: str) -> Manifest | None:
    data = read_json(job.manifest(date))
    return Manifest.from_dict(data) if data is not None else None


def read_marker(job: JobDir, table: str, date: str) -> Marker | None:
    data = read_json(job.partition(table, date) / SUCCESS)
    return Marker.from_dict(data) if data is not None else None


def is_published(job: JobDir, date: str) -> bool:
    """Every table the manifest lists carries _SUCCESS of the manifest's run."""
    manifest = read_manifest(job, date)
    if manifest is None:
        return False
    for table in manifest.tables:
        marker = read_marker(job, table, date)
        if marker is None or marker.run_id != manifest.run_id:
            return False
    return True


DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def is_date(text: str) -> bool:
    if not DATE_RE.match(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def read_latest(job: JobDir) -> tuple[str | None, str | None]:
    """(the date _LATEST names, what is wrong with it): a date with its manifest, or None and
    why not (None, None when there is no _LATEST)."""
    path = job.latest_file
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    text = data.decode("utf-8", errors="replace").strip()
    if not is_date(text):
        return None, f"{path} holds {shown(data)}, not a date"
    if not job.manifest(text).exists():
        return None, f"{path} names {text}, which has no manifest"
    return text, None


def shown(data: bytes, limit: int = 24) -> str:
    """A short printable view of a file's bytes, for a message."""
    if not data:
        return "nothing (0 bytes)"
    text = repr(data[:limit])[1:]
    return text + ("..." if len(data) > limit else "") + f" ({len(data)} bytes)"


def latest(job: JobDir) -> str | None:
    """The newest fully published date: what _LATEST names, or, when _LATEST holds garbage or
    names a date without a manifest, the newest published date (what a repair would write)."""
    date, problem = read_latest(job)
    if problem is None:
        return date
    dates = published_dates(job)
    return dates[-1] if dates else None


def marker_problem(job: JobDir, table: str, date: str) -> str | None:
    """What is wrong with a partition's _SUCCESS (None when it reads as a marker, or is absent)."""
    path = job.partition(table, date) / SUCCESS
    return record_problem(path, Marker.from_dict, "is not a partition marker", "is not a partition marker",
                          show_held=True)


def manifest_problem(job: JobDir, date: str) -> str | None:
    """What is wrong with a date's manifest file (None when it reads as a manifest, or is absent)."""
    return record_problem(job.manifest(date), Manifest.from_dict, "is not JSON",
                          "is not a manifest (JSON without its job, date, run_id and tables)")


def record_problem(path: Path, from_dict: Callable[[dict], object], not_json: str, not_record: str,
                   show_held: bool = False) -> str | None:
    """What is wrong with a JSON record file: unreadable, `not_json` (what it holds shown), or
    `not_record` when `from_dict` refuses it (what it holds shown with `show_held`); None when it
    reads, or is absent."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    try:
        parsed = json.loads(data)
    except ValueError:
        return f"{path} {not_json} (it holds {shown(data)})"
    if not isinstance(parsed, dict) or from_dict(parsed) is None:
        return f"{path} {not_record}" + (f" (it holds {shown(data)})" if show_held else "")
    return None


def manifest_dates(job: JobDir) -> list[str]:
    """Dates that have a manifest file, oldest first."""
    folder = job.manifest_dir
    if not folder.is_dir():
        return []
    return sorted(d for p in folder.glob("dt=*.json") if is_date(d := p.name[3:-5]))


def published_dates(job: JobDir) -> list[str]:
    """Dates with a manifest whose tables are all published, oldest first."""
    return [d for d in manifest_dates(job) if is_published(job, d)]


def previous_published(job: JobDir, date: str) -> str | None:
    """The newest published date before `date` (the backtest's subject, the gate's reference)."""
    earlier = [d for d in published_dates(job) if d < date]
    return earlier[-1] if earlier else None
