"""The publish journal on its own: wherever a multi-table publish stops, `recover` puts the date
back as it was (or, past the manifest, finishes _LATEST), with renameat2 exchange and with the
plain-rename fallback used on file systems without it; and part numbering across reruns."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recall.store import commit
from recall.store.atomic import write_atomic
from recall.store.layout import JobDir, next_part
from recall.store.state import is_published, latest, published_dates
from tests.support.files import published_files
from tests.support.publish import stage as staged

DATE = "2026-11-01"
TABLES = ("u2i", "i2i", "popular")


def stage(job: JobDir, run_id: str, n: int) -> None:
    staged(job, run_id, DATE, n, TABLES, seal=True)


def write_manifest(job: JobDir, run_id: str, date: str = DATE) -> None:
    tables = {t: {"rows": 0, "files": {}} for t in TABLES}
    write_atomic(job.manifest(date), json.dumps({"job": "job", "date": date, "run_id": run_id, "tables": tables}))


def snapshot(job: JobDir) -> dict[str, bytes]:
    return published_files(job.root)


@pytest.fixture(params=["exchange", "rename fallback"])
def job(request, tmp_path, monkeypatch) -> JobDir:
    if request.param == "rename fallback":
        monkeypatch.setattr(commit, "exchange", lambda a, b: False)  # as on a file system without it
    job = JobDir(tmp_path / "job")
    stage(job, "r1", 5)
    commit.begin_publish(job, "r1", DATE, list(TABLES))
    for table in TABLES:
        commit.publish_partition(job.staging("r1") / table / f"dt={DATE}", job.partition(table, DATE))
    write_manifest(job, "r1")
    commit.set_latest(job, DATE)
    commit.end_publish(job, "r1")
    commit.clear_staging(job)
    return job


@pytest.mark.parametrize("swapped", [0, 1, 2, 3])
def test_a_rerun_stopped_before_its_manifest_is_undone(job: JobDir, swapped: int):
    before = snapshot(job)
    stage(job, "r2", 7)
    commit.begin_publish(job, "r2", DATE, list(TABLES))
    for table in TABLES[:swapped]:
        commit.publish_partition(job.staging("r2") / table / f"dt={DATE}", job.partition(table, DATE))
    assert commit.clear_staging(job) == []  # unsettled: the previous partitions wait there
    assert commit.recover(job) == [f"run r2 of {DATE} died while publishing: the previous partitions are back"]
    assert snapshot(job) == before
    assert is_published(job, DATE)
    assert commit.clear_staging(job) == ["r2"]


def test_a_first_publish_stopped_half_way_is_taken_back_out(tmp_path):
    job = JobDir(tmp_path / "job")
    stage(job, "r1", 5)
    commit.begin_publish(job, "r1", DATE, list(TABLES))
    commit.publish_partition(job.staging("r1") / "u2i" / f"dt={DATE}", job.partition("u2i", DATE))
    commit.recover(job)
    assert not job.partition("u2i", DATE).exists()
    assert published_dates(job) == []


def test_the_fallback_swap_stopped_between_its_renames_is_undone(tmp_path):
    """Killed after `final` moved aside and before the new partition took its place."""
    job = JobDir(tmp_path / "job")
    stage(job, "r1", 5)
    for table in TABLES:
        commit.publish_partition(job.staging("r1") / table / f"dt={DATE}", job.partition(table, DATE))
    write_manifest(job, "r1")
    before = snapshot(job)
    stage(job, "r2", 7)
    commit.begin_publish(job, "r2", DATE, list(TABLES))
    staged = job.staging("r2") / "u2i" / f"dt={DATE}"
    job.partition("u2i", DATE).rename(commit.aside(staged))
    commit.recover(job)
    assert snapshot(job) == before


def test_a_run_stopped_after_its_manifest_only_gets_its_latest(job: JobDir):
    stage(job, "r2", 7)
    commit.begin_publish(job, "r2", "2026-11-02", list(TABLES))
    for table in TABLES:
        src = job.staging("r2") / table / f"dt={DATE}"
        src.rename(src.with_name("dt=2026-11-02"))
        commit.publish_partition(src.with_name("dt=2026-11-02"), job.partition(table, "2026-11-02"))
    write_manifest(job, "r2", "2026-11-02")
    assert latest(job) == DATE
    assert commit.recover(job) == ["run r2 of 2026-11-02 died after its manifest: _LATEST brought up to date"]
    assert latest(job) == "2026-11-02" and is_published(job, "2026-11-02")


def test_a_rerun_numbers_its_part_files_after_the_ones_it_replaces(job: JobDir):
    stage(job, "r2", 7)
    for table in TABLES:
        names = sorted(p.name for p in (job.staging("r2") / table / f"dt={DATE}").glob("*.parquet"))
        assert names == ["part-00001.parquet"]
    assert next_part(Path("/nonexistent")) == 0


def test_temporary_files_of_a_write_cut_short_are_cleared(job: JobDir):
    before = snapshot(job)
    for stale in (job.root / "._LATEST.tmp-4242", job.manifest(DATE).with_name(f".dt={DATE}.json.tmp-4242")):
        stale.write_text("half")
    commit.clear_staging(job)
    assert snapshot(job) == before
