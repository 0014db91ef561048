"""Shared parts of the reliability suite (tests/test_reliability_*.py): a published baseline
project, snapshots of what readers see, the one-line failure check, killable CLI runs, and a
record of every case's exit code and stderr line (appended to the Markdown file that
RECALL_RELIABILITY_REPORT names, when set)."""
from __future__ import annotations

import datetime as dt
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from recall.samples.synth import generate
from recall.store import item_side
from recall.store.layout import ITEM_SIDE
from tests.conftest import RUN_DATE, SMALL, run_cli, write_spec

DATE = RUN_DATE.isoformat()
PREVIOUS = (RUN_DATE - dt.timedelta(days=1)).isoformat()
NOT_PUBLISHED = ("_lock", "_history.jsonl")
FORCED = ["run", "small", "--date", DATE, "--force"]  # a forced rerun of the published DATE


# --- the baseline: a project with two published dates ----------------------------------


@pytest.fixture(scope="session")
def published_template(tmp_path_factory) -> Path:
    """A project whose job `small` has published PREVIOUS and DATE (_LATEST = DATE)."""
    root = tmp_path_factory.mktemp("published") / "project"
    generate(root / "data" / "log", RUN_DATE, SMALL)
    write_spec(root)
    for date in (PREVIOUS, DATE):
        res = run_cli(root, "run", "small", "--date", date)
        assert res.returncode == 0, res.stderr
    return root


@pytest.fixture
def published(published_template: Path, tmp_path: Path) -> Path:
    """A private copy of the published baseline project."""
    root = tmp_path / "project"
    shutil.copytree(published_template, root)
    return root


def out_dir(root: Path, job: str = "small") -> Path:
    return root / "data" / "recall" / job


def published_files(out: Path) -> dict[str, bytes]:
    """Bytes of every file readers rely on: tables, _SUCCESS, manifests, _LATEST (not the lock,
    the run history, or staging)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in NOT_PUBLISHED and "_staging" not in p.relative_to(out).parts}


def success_markers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("_SUCCESS") if "_staging" not in p.parts)


def staging_left(out: Path) -> list[str]:
    folder = out / "_staging"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def manifest(out: Path, date: str = DATE) -> dict:
    return json.loads((out / "_manifest" / f"dt={date}.json").read_text())


def table(out: Path, name: str, date: str = DATE) -> pa.Table:
    """A published partition read back with plain pyarrow, sorted as written."""
    return ds.dataset(out / name / f"dt={date}", format="parquet").to_table()


def assert_consistent(out: Path, date: str = DATE) -> dict:
    """Every table of the date's manifest has _SUCCESS of the manifest's run, its row count, and
    no duplicate keys; returns the manifest."""
    m = manifest(out, date)
    for name, info in m["tables"].items():
        marker = json.loads((out / name / f"dt={date}" / "_SUCCESS").read_text())
        assert marker["run_id"] == m["run_id"], (name, marker["run_id"], m["run_id"])
        if name == ITEM_SIDE:  # named files of several schemas: read as its own reader does
            assert item_side.load(out / name / f"dt={date}").run_id == m["run_id"]
            assert marker["rows"] == info["rows"], name
            continue
        data = table(out, name, date)
        assert data.num_rows == info["rows"] == marker["rows"], name
        keys = {"u2i": ["user_id", "item_id"], "i2i": ["item_id", "similar_item_id"], "popular": ["item_id"]}
        assert not data.select(keys[name]).to_pandas().duplicated().any(), f"duplicate rows in {name}"
    return m


# --- one-line failures -------------------------------------------------------------------


def record(case: str, res: subprocess.CompletedProcess, note: str = "") -> None:
    """Append what a case produced (exit code, stderr) to $RECALL_RELIABILITY_REPORT, a Markdown table."""
    target = os.environ.get("RECALL_RELIABILITY_REPORT")
    if not target:
        return
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    text = " / ".join(lines).replace("|", "\\|") or "(none)"
    new = not Path(target).exists()
    with open(target, "a", encoding="utf-8") as fh:
        if new:
            fh.write("| case | exit | stderr lines | stderr | note |\n| --- | --- | --- | --- | --- |\n")
        fh.write(f"| {case} | {res.returncode} | {len(lines)} | {text} | {note} |\n")


def one_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr}"
    assert lines[0].startswith("recall: "), lines[0]
    return lines[0]


def assert_refused(res: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The documented exit code and one stderr line holding every fragment."""
    assert res.returncode == code, f"exit {res.returncode}, expected {code}:\n{res.stderr}"
    line = one_line(res)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_untouched(out: Path, before: dict[str, bytes], markers_before: list[str]) -> None:
    """Nothing published, previous output byte-identical, no staging left behind."""
    assert success_markers(out) == markers_before, "a new _SUCCESS appeared"
    after = published_files(out)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"published files changed: {changed}"
    assert staging_left(out) == [], f"staging left behind: {staging_left(out)}"


# --- inputs --------------------------------------------------------------------------------


def window_frame(log: Path, date: str = DATE, days: int = 10) -> pd.DataFrame:
    """The rows of the window ending at `date` of a Hive-partitioned log, with its `dt` column."""
    end = dt.date.fromisoformat(date)
    wanted = [(end - dt.timedelta(days=i)).isoformat() for i in range(days)]
    data = ds.dataset(log, format="parquet", partitioning="hive").to_table()
    frame = data.to_pandas()
    frame["dt"] = frame["dt"].astype(str)
    return frame[frame["dt"].isin(wanted)].reset_index(drop=True)


def write_partitioned(frame: pd.DataFrame, folder: Path, schema: pa.Schema | None = None,
                      per_day: Callable[[str, pa.Table], pa.Table] | None = None) -> Path:
    """`frame` (with a `dt` column) as folder/dt=D/part-00000.parquet; `per_day` may alter a day."""
    for day, rows in frame.groupby("dt", sort=True):
        data = pa.Table.from_pandas(rows.drop(columns="dt"), schema=schema, preserve_index=False)
        if per_day is not None:
            data = per_day(day, data)
        part = folder / f"dt={day}"
        part.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        pq.write_table(data, part / "part-00000.parquet")
    return folder


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """`frame` as CSV, times as ISO text."""
    out = frame.drop(columns=[c for c in ("dt",) if c in frame.columns]).copy()
    if "ts" in out.columns and pd.api.types.is_datetime64_any_dtype(out["ts"]):
        out["ts"] = out["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


# --- killable runs -------------------------------------------------------------------------


def start_cli(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m recall --root ROOT ARGS...` started in the background, stderr piped."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RECALL_ROOT", None)
    return subprocess.Popen([sys.executable, "-m", "recall", "--root", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=root)


@pytest.fixture
def cli_bg():
    """start_cli for a test; whatever it started and left running is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
        started.append(start_cli(root, *args, env=env))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            kill(proc)


def resume(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    """Let a run paused at a test pause point go on (SIGUSR1) and wait for its end."""
    os.kill(proc.pid, signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll `condition` every 10 ms while `proc` runs; fail if it exits or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def wait_for_stderr(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read the run's stderr until a line holding `text` (e.g. a test pause point) appears."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if text in line:
                return line
    kill(proc)
    raise AssertionError(f"{text!r} never appeared on stderr:\n{''.join(seen)}")


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL the run (a real signal, no cleanup possible) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return proc.returncode


class LogTail:
    """What a job's log gained since this object was made (the runs started after it)."""

    def __init__(self, root: Path, job: str = "small") -> None:
        self.path = root / "logs" / f"{job}.log"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode("utf-8", errors="replace")

    def has(self, fragment: str) -> bool:
        return fragment in self.text()
