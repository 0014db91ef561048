"""Per-job run history: one JSON line per run, success or failure (kept to the last MAX_RUNS)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from loguru import logger

from recall.store.atomic import write_atomic
from recall.store.layout import JobDir
from recall.store.records import RunRecord

MAX_RUNS = 2000


def append(job: JobDir, record: RunRecord) -> None:
    """Append a run (call while holding the job's lock); never lets a full disk fail the run."""
    path = job.history_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(dataclasses.asdict(record), default=str) + "\n").encode()
        with open(path, "a+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size and os.pread(fh.fileno(), 1, size - 1) != b"\n":
                line = b"\n" + line  # the last line was torn by a crash: start a line of our own
            fh.write(line)
        trim(path)
    except OSError as exc:
        # a failed run has printed its one line already: then this is detail for the log only
        logger.bind(console=record.exit_code == 0).warning(f"cannot record the run in {path}: {exc.strerror}")


def trim(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > MAX_RUNS:
        write_atomic(path, "\n".join(lines[-MAX_RUNS:]) + "\n")


def runs(job: JobDir) -> list[RunRecord]:
    try:
        text = job.history_file.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = RunRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError, AttributeError):
            continue  # a line torn by a crash mid-write
        if record is not None:
            records.append(record)
    return records
