"""The commit protocol, for every engine: a run killed at each instant of its publish (the
test-only pause points of recall/testpoint.py) leaves the previous data as it was for every
reader, and the job's next run puts things right; and partitions written by other writers
(Spark's part names, Hadoop's empty _SUCCESS) are sealed into ours."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recall.store.commit import Publication
from recall.store.layout import JobDir
from recall.store.records import Manifest, TableInfo
from recall.store.reader import read_arrow, read_table
from tests.support.cli import wait_for_stderr
from tests.support.crash import killed, next_runs_succeed, after_crash
from tests.support.engines import ENGINES, engine_args
from tests.support.failures import record
from tests.support.files import assert_consistent, manifest, out_dir, published_files, staging_left
from tests.support.project import DATE, FORCED, PREVIOUS, RUN_DATE

NEXT = (RUN_DATE + dt.timedelta(days=1)).isoformat()


# A Spark process costs a JVM start (about 20 s of a CI machine's two cores), so a Spark run is
# stopped at the instants where its engine's own work shows: its executors' files sealed in staging
# without a marker, and its tables swapped in before the manifest. Past that every instant runs the
# same driver-side code of recall.store.commit on the same sealed files, which the local engine's
# cases stop at one by one.
SPARK_POINTS = ("before-success", "published-u2i")
FORCED_POINTS = ["before-success", "published-u2i", "published-popular"]
FORCED_CASES = [(e, p) for e in ENGINES for p in FORCED_POINTS if e == "local" or p in SPARK_POINTS]


@pytest.mark.parametrize("engine,point", FORCED_CASES, ids=[f"{e}-{p}" for e, p in FORCED_CASES])
def test_kill_between_data_and_marker_of_a_forced_rerun(point: str, engine: str, published: Path, cli, cli_bg):
    """Killed after the data and before what makes it visible: staged parts without _SUCCESS,
    or some tables swapped in before the manifest (the commit point) was written."""
    out = out_dir(published)
    before = published_files(out)
    old_u2i = read_arrow("small", "u2i", DATE, output=published / "data" / "recall")
    proc = cli_bg(published, *FORCED, *engine_args(engine), env={"RECALL_TEST_PAUSE_AT": point})
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


NEW_DATE_POINTS = ["before-success", "published-u2i", "published-popular", "before-latest"]
NEW_DATE_CASES = [(e, p) for e in ENGINES for p in NEW_DATE_POINTS if e == "local" or p == "published-u2i"]


@pytest.mark.parametrize("engine,point", NEW_DATE_CASES, ids=[f"{e}-{p}" for e, p in NEW_DATE_CASES])
def test_kill_while_publishing_a_new_date(point: str, engine: str, published: Path, cli, cli_bg):
    """The same points on a first publish of a date: an unfinished one is taken back out by the
    next run; one killed after its manifest is finished (its _LATEST moved) by the next run."""
    out = out_dir(published)
    before = published_files(out)
    args = ["run", "small", "--date", NEXT, "--set", "input.require_run_date=false", *engine_args(engine)]
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


@pytest.mark.parametrize("engine", ["local"])  # after the manifest, nothing is the engine's (see SPARK_POINTS)
def test_kill_between_manifest_and_latest_of_a_forced_rerun(engine: str, published: Path, cli, cli_bg):
    """The manifest is the commit point: the new run is complete and consistent; _LATEST already
    named the date."""
    out = out_dir(published)
    before = manifest(out)
    proc = cli_bg(published, *FORCED, *engine_args(engine), env={"RECALL_TEST_PAUSE_AT": "before-latest"})
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


def test_other_writers_partitions_are_sealed_into_ours(tmp_path: Path):
    """Spark names its files part-00000-<uuid>-c000.snappy.parquet, leaves .crc files and Hadoop's
    empty _SUCCESS: the seal renumbers the files after those they replace and writes our marker."""
    job = JobDir(tmp_path / "job")
    data = pa.table({"item_id": pa.array([1, 2, 3], pa.int64()), "rank": pa.array([1, 2, 3], pa.int32())})
    for run, rows in (("r1", data), ("r2", data.slice(0, 2))):
        pub = Publication(job, run, DATE)
        folder = pub.folder("popular")
        for i in range(2):
            pq.write_table(rows, folder / f"part-0000{i}-5e1c2d1f-3b7a-4c1e-9f3d-0a2b4c6d8e0f-c000.snappy.parquet")
            (folder / f".part-0000{i}-5e1c2d1f.snappy.parquet.crc").write_bytes(b"crc")
        (folder / "_SUCCESS").write_bytes(b"")  # Hadoop's: empty
        marker = pub.seal("popular")
        pub.publish(Manifest("job", DATE, run, {"popular": TableInfo(marker.rows, marker.files)}), keep_days=10)
        part = job.partition("popular", DATE)
        first = 0 if run == "r1" else 2  # a rerun numbers its files after the ones it replaced
        assert sorted(p.name for p in part.iterdir()) == ["_SUCCESS", f"part-{first:05d}.parquet",
                                                        f"part-{first + 1:05d}.parquet"]
        assert json.loads((part / "_SUCCESS").read_text()) == {
            "run_id": run, "rows": 2 * rows.num_rows,
            "files": {f"part-{first:05d}.parquet": rows.num_rows, f"part-{first + 1:05d}.parquet": rows.num_rows}}
        assert len(read_table("job", "popular", output=tmp_path)) == 2 * rows.num_rows
