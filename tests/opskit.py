"""Helpers for the operations tests: tiny projects whose data ends on a chosen day (often the
real yesterday, since cron and --catch-up run relative to the clock), and file snapshots."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from pathlib import Path

from recall.samples.synth import SynthSpec, generate

TINY = SynthSpec(users=300, items=120, rows_per_day=600, days=12, clusters=6, seed=5)

TINY_SPEC = """\
[job]
lookback_days = 4
{job}

[input]
path = "data/log"
event_weights = {{ view = 1.0, click = 3.0, purchase = 10.0 }}

[model]
factors = 8
iterations = 3
threads = 1

[recall.u2i]
k = 10

[recall.i2i]
k = 5

[recall.popular]
k = 20

[output]
keep_days = {keep_days}
{output}

[evaluate]
holdout_days = 0
{extra}
"""


def yesterday() -> dt.date:
    """Yesterday in UTC, the time zone of the test specs (what `recall run` defaults to)."""
    return dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)


def tiny_spec(root: Path, name: str, job: str = "", keep_days: int = 14, extra: str = "",
              output: str = "") -> Path:
    """jobs/<name>.toml; `job` and `output` are extra lines for [job] and [output] (e.g. a path)."""
    path = root / "jobs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY_SPEC.format(job=job, keep_days=keep_days, extra=extra, output=output))
    return path


def tiny_project(root: Path, end: dt.date, days: int = 12, name: str = "tiny", **spec) -> Path:
    """A project folder with jobs/<name>.toml over a tiny synthetic log ending on `end`."""
    generate(root / "data" / "log", end, SynthSpec(**{**vars(TINY), "days": days}))
    tiny_spec(root, name, **spec)
    return root


def out_dir(root: Path, job: str) -> Path:
    return root / "data" / "recall" / job


def partitions(root: Path, job: str, table: str = "u2i") -> list[str]:
    folder = out_dir(root, job) / table
    return sorted(p.name[3:] for p in folder.glob("dt=*")) if folder.is_dir() else []


def history(root: Path, job: str) -> list[dict]:
    path = out_dir(root, job) / "_history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file under `folder`: inode, size, mtime and bytes (what a loser must leave alone)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = os.stat(p)
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_size, st.st_mtime_ns, p.read_bytes())
    return out


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def logged(root: Path, job: str) -> str:
    """Every record of the job's log, its rotated and compressed files included."""
    text = ""
    for p in sorted((root / "logs").glob(f"{job}.*")):
        text += gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
    return text
