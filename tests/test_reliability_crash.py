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
import json
import shutil
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recall.store.reader import read_arrow
from recall.samples.synth import SynthSpec, generate
from tests.conftest import RUN_DATE
from tests.reliability import (
    DATE,
    FORCED,
    PREVIOUS,
    LogTail,
    assert_consistent,
    cli_bg,
    kill,
    manifest,
    out_dir,
    published,
    published_files,
    published_template,
    record,
    staging_left,
    wait_for,
    wait_for_stderr,
)

__all__ = ["cli_bg", "published", "published_template"]  # fixtures used below

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


def after_crash(root: Path, before: dict[str, bytes], case: str) -> None:
    """Right after the kill: the published files are exactly as before; the reader serves them."""
    out = out_dir(root)
    after = published_files(out)
    assert after == before, sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    for date in (PREVIOUS, DATE):
        assert_consistent(out, date)
    assert read_arrow("small", "u2i", output=root / "data" / "recall").equals(
        pq.read_table(out / "u2i" / f"dt={DATE}" / "part-00000.parquet"))


def next_runs_succeed(root: Path, cli, before: dict[str, bytes], case: str) -> None:
    """The next run clears the dead run's staging and sees DATE published as it was; a forced
    rerun then replaces it cleanly: one run's files, no duplicate rows."""
    out = out_dir(root)
    res = cli(root, "run", "small", "--date", DATE)
    record(f"crash {case}: next run", res)
    assert res.returncode == 0, res.stderr
    assert "already published" in res.stdout
    assert staging_left(out) == []
    assert published_files(out) == before
    res = cli(root, *FORCED)
    record(f"crash {case}: forced rerun", res)
    assert res.returncode == 0, res.stderr
    assert staging_left(out) == []
    m = assert_consistent(out, DATE)
    for name, info in m["tables"].items():
        part = out / name / f"dt={DATE}"
        assert sorted(p.name for p in part.iterdir()) == sorted(["_SUCCESS", *info["files"]])
    previous = {k: v for k, v in before.items() if f"dt={PREVIOUS}" in k}
    assert {k: v for k, v in published_files(out).items() if f"dt={PREVIOUS}" in k} == previous


def killed(proc) -> None:
    code = kill(proc)
    assert code == -9, f"the run was not killed (exit {code}): it finished before the kill point"


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


@pytest.mark.parametrize("point", ["before-success", "published-u2i", "published-popular"])
def test_kill_between_data_and_marker_of_a_forced_rerun(point: str, published: Path, cli, cli_bg):
    """Killed after the data and before what makes it visible: staged parts without _SUCCESS,
    or some tables swapped in before the manifest (the commit point) was written."""
    out = out_dir(published)
    before = published_files(out)
    old_u2i = read_arrow("small", "u2i", DATE, output=published / "data" / "recall")
    proc = cli_bg(published, *FORCED, env={"RECALL_TEST_PAUSE_AT": point})
    wait_for_stderr(proc, f"test pause at {point}")
    killed(proc)
    if point == "before-success":
        parts = sorted(p.name for p in out.glob("_staging/*/u2i/dt=*/*"))
        assert parts == ["part-00001.parquet"], parts  # the data (numbered after the old), no marker
        after_crash(published, before, point)
    else:
        # the dead run's tables are in, its manifest is not: the date is not published, and a
        # reader of the newest date gets the previous complete date instead of a mix
        marker = json.loads((out / "u2i" / f"dt={DATE}" / "_SUCCESS").read_text())
        assert marker["run_id"] != manifest(out)["run_id"]
        newest = read_arrow("small", "u2i", output=published / "data" / "recall")
        assert newest.equals(read_arrow("small", "u2i", PREVIOUS, output=published / "data" / "recall"))
        with pytest.raises(LookupError):
            read_arrow("small", "u2i", DATE, output=published / "data" / "recall")
        assert {k: v for k, v in published_files(out).items() if f"dt={PREVIOUS}" in k} == \
            {k: v for k, v in before.items() if f"dt={PREVIOUS}" in k}
    next_runs_succeed(published, cli, before, point)
    assert len(read_arrow("small", "u2i", DATE, output=published / "data" / "recall")) == len(old_u2i)


@pytest.mark.parametrize("point", ["before-success", "published-u2i", "published-popular", "before-latest"])
def test_kill_while_publishing_a_new_date(point: str, published: Path, cli, cli_bg):
    """The same points on a first publish of a date: an unfinished one is taken back out by the
    next run; one killed after its manifest is finished (its _LATEST moved) by the next run."""
    out = out_dir(published)
    before = published_files(out)
    args = ["run", "small", "--date", NEXT, "--set", "input.require_run_date=false"]
    proc = cli_bg(published, *args, env={"RECALL_TEST_PAUSE_AT": point})
    wait_for_stderr(proc, f"test pause at {point}")
    killed(proc)
    assert (out / "_LATEST").read_text().strip() == DATE
    assert read_arrow("small", "u2i", output=published / "data" / "recall").equals(
        read_arrow("small", "u2i", DATE, output=published / "data" / "recall"))
    assert {k: v for k, v in published_files(out).items() if NEXT not in k} == before
    res = cli(published, *args)
    record(f"crash new date at {point}: next run", res)
    assert res.returncode == 0, res.stderr
    if point == "before-latest":
        assert "already published" in res.stdout  # the manifest committed it; only _LATEST lagged
    assert (out / "_LATEST").read_text().strip() == NEXT
    assert staging_left(out) == []
    assert_consistent(out, NEXT)
    assert {k: v for k, v in published_files(out).items() if NEXT not in k and k != "_LATEST"} == \
        {k: v for k, v in before.items() if k != "_LATEST"}


def test_kill_between_manifest_and_latest_of_a_forced_rerun(published: Path, cli, cli_bg):
    """The manifest is the commit point: the new run is complete and consistent; _LATEST already
    named the date."""
    out = out_dir(published)
    before = manifest(out)
    proc = cli_bg(published, *FORCED, env={"RECALL_TEST_PAUSE_AT": "before-latest"})
    wait_for_stderr(proc, "test pause at before-latest")
    killed(proc)
    m = assert_consistent(out, DATE)
    assert m["run_id"] != before["run_id"]
    assert (out / "_LATEST").read_text().strip() == DATE
    res = cli(published, "run", "small", "--date", DATE)
    record("crash forced rerun at before-latest: next run", res)
    assert res.returncode == 0 and "already published" in res.stdout
    assert staging_left(out) == []
    assert manifest(out)["run_id"] == m["run_id"]
