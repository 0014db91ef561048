"""SIGKILL at every stage of a run (a real os.kill, no cleanup possible): while reading, training,
searching, half-way through the part files, between a table's data and its _SUCCESS, between two
tables, between the manifest and _LATEST. The previous data stays as it was (or is put back by
the next run), readers only ever get a complete date, the next run succeeds, no duplicate rows.

The slow stages are caught for real (a log of many small files, many ALS iterations, many users to
search, part files appearing in staging) and the log proves where the run was when it died; the
instants that no timing can hit use the test-only pause points of recall/testpoint.py.
"""
from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recall.samples.synth import SynthSpec, generate
from tests.support.cli import LogTail, wait_for
from tests.support.crash import after_crash, killed, next_runs_succeed
from tests.support.files import out_dir, published_files
from tests.support.project import FORCED, RUN_DATE


NEXT = (RUN_DATE + dt.timedelta(days=1)).isoformat()


@pytest.fixture(scope="session")
def many_files_log(published_template: Path, tmp_path_factory) -> Path:
    """The small log split into 200 files a day (an ingestion that lands many small files):
    reading its window takes seconds."""
    folder = tmp_path_factory.mktemp("many") / "log"
    data = ds.dataset(published_template / "data" / "log", format="parquet", partitioning="hive").to_table()
    frame = data.to_pandas()
    for day, rows in frame.groupby(frame["dt"].astype(str)):
        part = folder / f"dt={day}"
        part.mkdir(parents=True)
        rows = rows.drop(columns="dt")
        step = -(-len(rows) // 200)
        for i in range(200):
            pq.write_table(pq_table(rows.iloc[i * step:(i + 1) * step]), part / f"part-{i:05d}.parquet")
    return folder


def pq_table(frame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


@pytest.fixture(scope="session")
def big_log(tmp_path_factory) -> Path:
    """About 60k users: searching and writing their u2i lists takes seconds."""
    folder = tmp_path_factory.mktemp("big") / "log"
    generate(folder, RUN_DATE, SynthSpec(users=100_000, items=10_000, rows_per_day=30_000, days=10, seed=5))
    return folder


def link_input(root: Path, source: Path, name: str) -> list[str]:
    target = root / "data" / name
    shutil.copytree(source, target)
    return ["--set", f'input.path="data/{name}"']


def test_kill_while_reading(published: Path, cli, many_files_log: Path, cli_bg):
    args = link_input(published, many_files_log, "many")
    before = published_files(out_dir(published))
    log = LogTail(published)
    proc = cli_bg(published, *FORCED, *args)
    wait_for(proc, lambda: log.has(": window "), "reading starts")
    time.sleep(0.5)
    killed(proc)
    text = log.text()
    assert "step read done" not in text, "killed too late: reading had finished"
    after_crash(published, before, "reading")
    next_runs_succeed(published, cli, before, "while reading")


def test_kill_while_training(published: Path, cli, cli_bg):
    before = published_files(out_dir(published))
    log = LogTail(published)
    proc = cli_bg(published, *FORCED, "--set", "model.iterations=100000", "--set", "evaluate.holdout_days=0")
    wait_for(proc, lambda: log.has(" users x "), "training starts")
    time.sleep(0.5)
    killed(proc)
    assert "step matrix done" in log.text() and "step train done" not in log.text()
    after_crash(published, before, "training")
    next_runs_succeed(published, cli, before, "while training")


BIG = ["--set", "model.iterations=2", "--set", "evaluate.holdout_days=0", "--set", "recall.i2i.k=0"]


@pytest.mark.slow
def test_kill_while_searching(published: Path, cli, big_log: Path, cli_bg):
    args = link_input(published, big_log, "big")
    before = published_files(out_dir(published))
    log = LogTail(published)
    proc = cli_bg(published, *FORCED, *args, *BIG)
    wait_for(proc, lambda: log.has("step train done"), "the u2i search starts")
    time.sleep(0.3)
    staged = list((out_dir(published) / "_staging").rglob("*.parquet"))
    killed(proc)
    assert "step u2i done" not in log.text()
    assert staged == [], "killed too late: u2i rows were being written already"
    after_crash(published, before, "search")
    next_runs_succeed(published, cli, before, "while searching")


@pytest.mark.slow
def test_kill_in_the_middle_of_the_part_files(published: Path, cli, big_log: Path, cli_bg):
    args = link_input(published, big_log, "big")
    before = published_files(out_dir(published))
    log = LogTail(published)
    proc = cli_bg(published, *FORCED, *args, *BIG, "--set", "output.row_group_rows=20000",
                     "--set", "output.max_rows_per_file=60000")
    staging = out_dir(published) / "_staging"
    wait_for(proc, lambda: any(staging.glob("*/u2i/dt=*/part-00002.parquet")), "the third u2i part file")
    killed(proc)
    assert "step u2i done" not in log.text()
    parts = sorted(p.name for p in staging.glob("*/u2i/dt=*/*"))
    assert "part-00002.parquet" in parts and "_SUCCESS" not in parts
    after_crash(published, before, "part files")
    next_runs_succeed(published, cli, before, "mid part files")


