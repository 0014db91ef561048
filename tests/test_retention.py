"""Forty nightly runs of a tiny job: retention keeps keep_days partitions (never the one _LATEST
names), leftover staging from a crashed run goes at the next run, disk use plateaus, logs rotate
and expire per the spec. The nights run in-process (fast); the last one through the real CLI."""
from __future__ import annotations

import datetime as dt
import json
import os
import time

from recall.store import history
from recall.jobs import load_job as load_spec
from recall.run.nightly import RunOptions, run_job
from recall.store.layout import JobDir
from recall.store.records import RunRecord
from tests.support.cli import run_cli
from tests.support.files import logged, out_dir, partitions, tree_bytes
from tests.support.project import tiny_project

KEEP = 5
NIGHTS = 40
FIRST = dt.date(2026, 9, 1)
LOG = '[log]\nrotation = "10 KB"\nretention = 3\n'


def test_forty_nights_keep_partitions_logs_and_disk_bounded(tmp_path):
    last = FIRST + dt.timedelta(days=NIGHTS - 1)
    root = tiny_project(tmp_path, last, days=NIGHTS + 3, keep_days=KEEP, extra=LOG)
    spec = load_spec(root / "jobs" / "tiny.toml")
    out = out_dir(root, "tiny")
    data_bytes, all_bytes = [], []
    for night in range(NIGHTS - 1):
        date = FIRST + dt.timedelta(days=night)
        if night == 20:  # what a run killed mid-write leaves: a staged partition and retired leftovers
            crashed = out / "_staging" / "20260921T023000-dead01"
            (crashed / "u2i" / f"dt={date}").mkdir(parents=True)
            (crashed / "u2i" / f"dt={date}" / "part-00000.parquet").write_bytes(os.urandom(200_000))
            (crashed / "retired" / "i2i-2026-09-01").mkdir(parents=True)
        result = run_job(spec, RunOptions(date, root))
        assert result.status == "published"
        kept = [str(FIRST + dt.timedelta(days=d)) for d in range(max(0, night - KEEP + 1), night + 1)]
        for table in ("u2i", "i2i", "popular"):
            assert partitions(root, "tiny", table) == kept, (date, table)
        assert sorted(p.name for p in (out / "_manifest").iterdir()) == [f"dt={d}.json" for d in kept]
        assert (out / "_LATEST").read_text().strip() == str(date)
        assert not any((out / "_staging").iterdir())
        if night == 20:
            assert "cleared 1 staging folder(s) left by earlier runs" in logged(root, "tiny")
        history_size = (out / "_history.jsonl").stat().st_size
        all_bytes.append(tree_bytes(out))
        data_bytes.append(all_bytes[-1] - history_size)

    # a backfill of an old date publishes it, and retention removes it again, never _LATEST's date
    old = run_job(spec, RunOptions(FIRST, root))
    assert old.status == "published" and partitions(root, "tiny")[0] != str(FIRST)
    assert (out / "_LATEST").read_text().strip() == str(last - dt.timedelta(days=1))

    # the last night through the real CLI, logs rotating at 1 KB and expiring after 2 days
    rotated = sorted((root / "logs").glob("tiny.*.log.gz"))
    assert 1 <= len(rotated) <= 3  # rotated at 10 KB, 3 kept
    aged = time.time() - 3 * 86400
    for p in rotated:
        os.utime(p, (aged, aged))
    res = run_cli(root, "run", "tiny", "--date", str(last), "--set", 'log.rotation="1 KB"',
                  "--set", 'log.retention="2 days"')
    assert res.returncode == 0, res.stderr
    assert partitions(root, "tiny") == [str(last - dt.timedelta(days=d)) for d in range(KEEP - 1, -1, -1)]
    now_rotated = sorted((root / "logs").glob("tiny.*.log.gz"))
    assert now_rotated and not set(rotated) & set(now_rotated)

    # disk use plateaus once keep_days partitions exist: the last 20 nights are no bigger than
    # the 15 before them (give or take the data's day-to-day wobble); only the run history
    # grows, a few hundred bytes a run, and it is trimmed to history.MAX_RUNS lines
    steady, late = data_bytes[KEEP:20], data_bytes[20:]
    print(f"bytes under the job folder, nights 1..{NIGHTS - 1}: {all_bytes}")
    print(f"tables+manifests: nights {KEEP + 1}-20 max {max(steady):,}, nights 21-{NIGHTS - 1} max {max(late):,}")
    assert max(late) <= 1.15 * max(steady)
    assert max(data_bytes) <= 1.15 * KEEP * (data_bytes[0] + 1024)
    assert all_bytes[-1] - data_bytes[-1] < 400 * NIGHTS


def test_run_history_is_trimmed(tmp_path):
    out = JobDir(tmp_path / "job")
    for i in range(history.MAX_RUNS + 5):
        history.append(out, RunRecord("2026-11-20", str(i), "published", 0))
    runs = history.runs(out)
    assert len(runs) == history.MAX_RUNS and runs[0].run_id == "5" and runs[-1].run_id == str(history.MAX_RUNS + 4)
    with open(out.history_file, "a") as fh:
        fh.write('{"date": "2026-11-21", "run_')  # a line torn by a crash is skipped when read
    assert len(history.runs(out)) == history.MAX_RUNS
    history.append(out, RunRecord("2026-11-22", "after", "published", 0))  # starts on a line of its own
    assert history.runs(out)[-1].run_id == "after"
    lines = out.history_file.read_text().splitlines()  # the torn line was dropped (with a warning)
    assert len(lines) == history.MAX_RUNS and json.loads(lines[0])["run_id"] == "6"
