"""The publish journal on its own: wherever a multi-table publish stops, `recover` puts the date
back as it was (or, past the manifest, finishes _LATEST), with renameat2 exchange and with the
plain-rename fallback used on file systems without it; and part numbering across reruns."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from recall import publish
from recall.publish import JobDir, TableWriter

SCHEMA = pa.schema([("item_id", pa.int64()), ("rank", pa.int32())])
DATE = "2026-11-01"
TABLES = ("u2i", "i2i", "popular")


def stage(job: JobDir, run_id: str, n: int) -> None:
    for table in TABLES:
        folder = job.staging(run_id) / table / f"dt={DATE}"
        w = TableWriter(folder, SCHEMA, 1000, 1000, first_part=publish.next_part(job.partition(table, DATE)))
        w.write(pa.table({"item_id": pa.array(range(n), pa.int64()), "rank": pa.array(range(1, n + 1), pa.int32())}))
        w.close(run_id)


def commit(job: JobDir, run_id: str) -> None:
    publish.write_atomic(job.manifest(DATE), json.dumps({"run_id": run_id, "tables": {t: {} for t in TABLES}}))


def snapshot(job: JobDir) -> dict[str, bytes]:
    return {str(p.relative_to(job.root)): p.read_bytes() for p in sorted(job.root.rglob("*"))
            if p.is_file() and publish.STAGING not in p.relative_to(job.root).parts}


@pytest.fixture(params=["exchange", "rename fallback"])
def job(request, tmp_path, monkeypatch) -> JobDir:
    if request.param == "rename fallback":
        monkeypatch.setattr(publish, "exchange", lambda a, b: False)  # as on a file system without it
    job = JobDir(tmp_path / "job")
    stage(job, "r1", 5)
    publish.begin_publish(job, "r1", DATE, list(TABLES))
    for table in TABLES:
        publish.publish_partition(job.staging("r1") / table / f"dt={DATE}", job.partition(table, DATE))
    commit(job, "r1")
    publish.set_latest(job, DATE)
    publish.end_publish(job, "r1")
    publish.clear_staging(job)
    return job


@pytest.mark.parametrize("swapped", [0, 1, 2, 3])
def test_a_rerun_stopped_before_its_manifest_is_undone(job: JobDir, swapped: int):
    before = snapshot(job)
    stage(job, "r2", 7)
    publish.begin_publish(job, "r2", DATE, list(TABLES))
    for table in TABLES[:swapped]:
        publish.publish_partition(job.staging("r2") / table / f"dt={DATE}", job.partition(table, DATE))
    assert publish.clear_staging(job) == []  # unsettled: the previous partitions wait there
    assert publish.recover(job) == [f"run r2 of {DATE} died while publishing: the previous partitions are back"]
    assert snapshot(job) == before
    assert publish.is_published(job, DATE)
    assert publish.clear_staging(job) == ["r2"]


def test_a_first_publish_stopped_half_way_is_taken_back_out(tmp_path):
    job = JobDir(tmp_path / "job")
    stage(job, "r1", 5)
    publish.begin_publish(job, "r1", DATE, list(TABLES))
    publish.publish_partition(job.staging("r1") / "u2i" / f"dt={DATE}", job.partition("u2i", DATE))
    publish.recover(job)
    assert not job.partition("u2i", DATE).exists()
    assert publish.published_dates(job) == []


def test_the_fallback_swap_stopped_between_its_renames_is_undone(tmp_path):
    """Killed after `final` moved aside and before the new partition took its place."""
    job = JobDir(tmp_path / "job")
    stage(job, "r1", 5)
    for table in TABLES:
        publish.publish_partition(job.staging("r1") / table / f"dt={DATE}", job.partition(table, DATE))
    commit(job, "r1")
    before = snapshot(job)
    stage(job, "r2", 7)
    publish.begin_publish(job, "r2", DATE, list(TABLES))
    staged = job.staging("r2") / "u2i" / f"dt={DATE}"
    job.partition("u2i", DATE).rename(publish.aside(staged))
    publish.recover(job)
    assert snapshot(job) == before


def test_a_run_stopped_after_its_manifest_only_gets_its_latest(job: JobDir):
    stage(job, "r2", 7)
    publish.begin_publish(job, "r2", "2026-11-02", list(TABLES))
    for table in TABLES:
        src = job.staging("r2") / table / f"dt={DATE}"
        src.rename(src.with_name("dt=2026-11-02"))
        publish.publish_partition(src.with_name("dt=2026-11-02"), job.partition(table, "2026-11-02"))
    publish.write_atomic(job.manifest("2026-11-02"), json.dumps({"run_id": "r2", "tables": {t: {} for t in TABLES}}))
    assert publish.latest(job) == DATE
    assert publish.recover(job) == ["run r2 of 2026-11-02 died after its manifest: _LATEST brought up to date"]
    assert publish.latest(job) == "2026-11-02" and publish.is_published(job, "2026-11-02")


def test_a_rerun_numbers_its_part_files_after_the_ones_it_replaces(job: JobDir):
    stage(job, "r2", 7)
    for table in TABLES:
        names = sorted(p.name for p in (job.staging("r2") / table / f"dt={DATE}").glob("*.parquet"))
        assert names == ["part-00001.parquet"]
    assert publish.next_part(Path("/nonexistent")) == 0


def test_temporary_files_of_a_write_cut_short_are_cleared(job: JobDir):
    before = snapshot(job)
    for stale in (job.root / "._LATEST.tmp-4242", job.manifest(DATE).with_name(f".dt={DATE}.json.tmp-4242")):
        stale.write_text("half")
    publish.clear_staging(job)
    assert snapshot(job) == before
