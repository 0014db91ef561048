"""Per-job run history: one JSON line per run, success or failure (kept to the last MAX_RUNS)."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from loguru import logger

from recall.publish import JobDir, is_published, latest

HISTORY = "_history.jsonl"
MAX_RUNS = 2000


def path_of(out: JobDir) -> Path:
    return out.root / HISTORY


def append(out: JobDir, record: dict) -> None:
    """Append a run (call while holding the job's lock); never lets a full disk fail the run."""
    path = path_of(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        trim(path)
    except OSError as exc:
        logger.warning(f"cannot record the run in {path}: {exc.strerror}")


def trim(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > MAX_RUNS:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("\n".join(lines[-MAX_RUNS:]) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def runs(out: JobDir) -> list[dict]:
    try:
        text = path_of(out).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write
    return records


def missing_dates(spec, root: Path, through: dt.date) -> list[dt.date]:
    """Dates after the last published one up to `through` that are not published yet.

    With nothing published yet, only `through` itself (a new job starts from its first night).
    """
    from recall.pipeline import job_dir

    out = job_dir(spec, root)
    last = latest(out)
    if not last:
        return [through]
    start = dt.date.fromisoformat(last) + dt.timedelta(days=1)
    dates = [start + dt.timedelta(days=i) for i in range((through - start).days + 1)]
    return [d for d in dates if not is_published(out, d.isoformat())]
