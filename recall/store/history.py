"""Per-job run history: one JSON line per run, success or failure (kept to the last MAX_RUNS)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

from loguru import logger

from recall.store.atomic import write_atomic
from recall.store.layout import JobDir
from recall.store.records import RunRecord

MAX_RUNS = 2000


def append(job: JobDir, record: RunRecord) -> None:
    """Append a run (call while holding the job's lock); never lets a full disk fail the run.
    Opened without following a link: the history is never written outside the job folder."""
    path = job.history_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(dataclasses.asdict(record), default=str) + "\n").encode()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size and os.pread(fh.fileno(), 1, size - 1) != b"\n":
                line = b"\n" + line  # the last line was torn by a crash: start a line of our own
            fh.write(line)
        tidy(path)
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        # a failed run has printed its one line already: then this is detail for the log only
        logger.bind(console=record.exit_code == 0).warning(f"cannot record the run in {path}: {reason}")


def tidy(path: Path) -> None:
    """Keep the last MAX_RUNS runs; drop lines that are not run records (garbage, a line torn by
    a crash), saying how many. Lines are parsed only when one does not look like ours or there
    are too many: an append stays cheap."""
    lines = path.read_bytes().split(b"\n")
    ours = all(not line or (line.startswith(b'{"date": ') and line.endswith(b"}")) for line in lines)
    if ours and len(lines) <= MAX_RUNS + 1:
        return
    good = [line for line in lines if parse(line) is not None]
    bad = sum(1 for line in lines if line.strip()) - len(good)
    if bad or len(good) > MAX_RUNS:
        write_atomic(path, "".join(line.decode() + "\n" for line in good[-MAX_RUNS:]))
    if bad:
        logger.warning(f"{path}: dropped {bad} unreadable line(s) (not run records); kept {min(len(good), MAX_RUNS)} run(s)")


def parse(line: bytes) -> RunRecord | None:
    try:
        data = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    return RunRecord.from_dict(data) if isinstance(data, dict) else None


def read_runs(job: JobDir) -> tuple[list[RunRecord], str | None]:
    """The recorded runs, oldest first, and what was wrong with the file (lines that are not run
    records, or the file unreadable), None when nothing."""
    path = job.history_file
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return [], None
    except OSError as exc:
        return [], f"cannot read {path}: {exc.strerror}"
    records, bad = [], 0
    for line in data.split(b"\n"):
        record = parse(line) if line.strip() else None
        if record is not None:
            records.append(record)
        elif line.strip():
            bad += 1
    return records, f"{path}: {bad} unreadable line(s) skipped" if bad else None


def runs(job: JobDir) -> list[RunRecord]:
    return read_runs(job)[0]
