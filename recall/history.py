"""Per-job run history: one JSON line per run, success or failure (kept to the last MAX_RUNS)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from loguru import logger

from recall.publish import JobDir, write_atomic

HISTORY = "_history.jsonl"
MAX_RUNS = 2000


def path_of(out: JobDir) -> Path:
    return out.root / HISTORY


def append(out: JobDir, record: dict) -> None:
    """Append a run (call while holding the job's lock); never lets a full disk fail the run."""
    path = path_of(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, default=str) + "\n").encode()
        with open(path, "a+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size and os.pread(fh.fileno(), 1, size - 1) != b"\n":
                line = b"\n" + line  # the last line was torn by a crash: start a line of our own
            fh.write(line)
        trim(path)
    except OSError as exc:
        # a failed run has printed its one line already: then this is detail for the log only
        logger.bind(console=record.get("exit_code") == 0).warning(f"cannot record the run in {path}: {exc.strerror}")


def trim(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > MAX_RUNS:
        write_atomic(path, "\n".join(lines[-MAX_RUNS:]) + "\n")


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
