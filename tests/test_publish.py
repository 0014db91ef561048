"""Staged writing, atomic publish, the published-date rule, _LATEST, retention, and the reader."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recall.store import commit
from recall.store.atomic import write_atomic
from recall.store.layout import STAGING, JobDir
from recall.store.state import is_published, latest, published_dates
from recall.store.tables import TableWriter
from tests.support.publish import SCHEMA, release, rows, stage
from recall.store.reader import read_table

def test_writer_splits_part_files_and_row_groups(tmp_path):
    w = TableWriter(tmp_path / "t", SCHEMA, max_rows_per_file=250, row_group_rows=100)
    for i in range(7):
        w.write(rows(90, i * 90))
    assert w.close() == 630
    marker = commit.seal(tmp_path / "t", tmp_path / "final", "run1")
    assert marker.rows == 630 and list(marker.files.values()) == [250, 250, 130]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "_SUCCESS", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    meta = pq.ParquetFile(tmp_path / "t" / "part-00000.parquet").metadata
    assert meta.num_rows == 250 and max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 100
    back = pa.concat_tables(pq.read_table(tmp_path / "t" / n) for n in marker.files)
    assert back.column("item_id").to_pylist() == list(range(630))
    assert json.loads((tmp_path / "t" / "_SUCCESS").read_text())["run_id"] == "run1"


def test_empty_table_still_has_a_part_with_the_schema(tmp_path):
    assert TableWriter(tmp_path / "t", SCHEMA, 10, 10).close() == 0
    marker = commit.seal(tmp_path / "t", tmp_path / "final", "r")
    assert (marker.run_id, marker.rows, marker.files) == ("r", 0, {"part-00000.parquet": 0})
    assert pq.read_schema(tmp_path / "t" / "part-00000.parquet") == SCHEMA


def test_publish_new_then_replace_by_exchange(tmp_path):
    job = JobDir(tmp_path / "job")
    stage(job, "r1", "2026-11-01", 5)
    release(job, "r1", "2026-11-01")
    assert is_published(job, "2026-11-01")
    stage(job, "r2", "2026-11-01", 7)
    release(job, "r2", "2026-11-01")
    part = job.partition("popular", "2026-11-01")
    assert sorted(p.name for p in part.iterdir()) == ["_SUCCESS", "part-00001.parquet"]  # after the replaced
    assert pq.read_table(part / "part-00001.parquet").num_rows == 7
    old = job.staging("r2") / "popular" / "dt=2026-11-01"  # the old one waits here until the run ends
    assert pq.read_table(old / "part-00000.parquet").num_rows == 5
    commit.clear_staging(job)
    assert not old.exists()


def test_a_date_is_published_only_when_every_table_carries_the_manifest_run(tmp_path):
    job = JobDir(tmp_path / "job")
    stage(job, "r1", "2026-11-01", 5, ("u2i", "popular"))
    release(job, "r1", "2026-11-01", ("u2i", "popular"))
    # a crashed forced rerun that swapped u2i but wrote no manifest: not fully published
    stage(job, "r2", "2026-11-01", 6, ("u2i",)).seal("u2i")
    commit.publish_partition(job.staging("r2") / "u2i" / "dt=2026-11-01", job.partition("u2i", "2026-11-01"))
    assert not is_published(job, "2026-11-01")
    assert published_dates(job) == []
    with pytest.raises(LookupError, match="not published"):
        read_table("job", "u2i", "2026-11-01", output=tmp_path)


def test_latest_only_moves_forward(tmp_path):
    job = JobDir(tmp_path / "job")
    for run, date in (("r1", "2026-11-05"), ("r2", "2026-11-03")):
        stage(job, run, date, 3)
        release(job, run, date)
    assert latest(job) == "2026-11-05"
    assert published_dates(job) == ["2026-11-03", "2026-11-05"]
    assert len(read_table("job", "popular", output=tmp_path)) == 3


def test_retention_keeps_keep_days_before_latest(tmp_path):
    job = JobDir(tmp_path / "job")
    dates = [f"2026-11-{d:02d}" for d in range(1, 11)]
    for i, date in enumerate(dates):
        stage(job, f"r{i}", date, 2)
        release(job, f"r{i}", date)
    removed = commit.retire(job, keep_days=3, run_id="rx")
    assert removed == dates[:7]
    assert published_dates(job) == dates[7:]
    assert sorted(p.name for p in (job.root / "popular").iterdir()) == [f"dt={d}" for d in dates[7:]]


def test_clear_staging_removes_leftovers(tmp_path):
    job = JobDir(tmp_path / "job")
    stage(job, "crashed", "2026-11-01", 5)
    assert commit.clear_staging(job) == ["crashed"]
    assert list((job.root / STAGING).iterdir()) == []


def test_reader_refuses_unknown_tables_and_empty_jobs(tmp_path):
    with pytest.raises(ValueError, match="unknown table"):
        read_table("job", "nope", output=tmp_path)
    with pytest.raises(LookupError, match="nothing published"):
        read_table("job", "u2i", output=tmp_path)


def test_write_atomic_leaves_no_temp_files(tmp_path: Path):
    write_atomic(tmp_path / "a" / "f.json", "{}")
    write_atomic(tmp_path / "a" / "f.json", '{"x": 1}')
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.json"]
    assert json.loads((tmp_path / "a" / "f.json").read_text()) == {"x": 1}
