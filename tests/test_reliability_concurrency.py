"""Runs at the same time: the same job twice (one exits 75 and leaves no trace), two jobs at once
(both publish), and readers polling a table while a forced rerun replaces it (they only ever get
the complete old or the complete new partition)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recall.store.reader import read_arrow
from tests.support.cli import LogTail, wait_for
from tests.support.failures import assert_refused, record
from tests.support.files import assert_consistent, history, manifest, out_dir, staging_left
from tests.support.project import DATE, FORCED


SLOW = ["--set", "model.iterations=300", "--set", "evaluate.holdout_days=0"]  # ~2 s of training: runs overlap


def finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def lock_holder(out: Path) -> int | None:
    try:
        return json.loads((out / "_lock").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def test_same_job_twice_the_second_exits_75_naming_the_holder(published: Path, cli, cli_bg):
    out = out_dir(published)
    runs_before = len(history(published))
    log = LogTail(published)
    first = cli_bg(published, *FORCED, *SLOW)
    wait_for(first, lambda: lock_holder(out) == first.pid, "the first run holds the lock")
    second = cli(published, *FORCED)
    record("same job twice: the second run", second)
    assert first.poll() is None, "the first run ended before the second tried: no contention tested"
    line = assert_refused(second, 75, "job small is already running", f"pid {first.pid}", "since ")
    assert "_lock" in line
    code, _, err = finish(first)
    assert code == 0, err
    assert_consistent(out)
    # the loser wrote nothing: one new run in the log and in the history, the winner's
    assert log.text().count(": window ") == 1
    new = history(published)[runs_before:]
    assert [r["run_id"] for r in new] == [manifest(out)["run_id"]]
    assert staging_left(out) == []


def test_same_job_started_twice_at_the_same_moment(published: Path, cli_bg):
    out = out_dir(published)
    procs = [cli_bg(published, *FORCED, *SLOW) for _ in range(2)]
    results = [finish(p) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 75], [r[2] for r in results]
    loser = next(err for code, _, err in results if code == 75)
    assert len(loser.strip().splitlines()) == 1 and "already running" in loser
    assert_consistent(out)
    assert staging_left(out) == []


def test_two_different_jobs_at_once_both_publish(published: Path, cli_bg):
    spec = (published / "jobs" / "small.toml").read_text()
    (published / "jobs" / "other.toml").write_text(spec)
    procs = {job: cli_bg(published, "run", job, "--date", DATE, "--force", *SLOW) for job in ("small", "other")}
    time.sleep(0.2)
    assert all(p.poll() is None for p in procs.values())
    for job, proc in procs.items():
        code, stdout, err = finish(proc)
        assert code == 0, err
        assert "published" in stdout
        m = assert_consistent(out_dir(published, job))
        assert m["job"] == job
        assert f"job={job} date={DATE} run={m['run_id']}" in (published / "logs" / f"{job}.log").read_text()
    assert manifest(out_dir(published, "small"))["run_id"] != manifest(out_dir(published, "other"))["run_id"]


def sort(table: pa.Table) -> pa.Table:
    return table.sort_by([("user_id", "ascending"), ("rank", "ascending")])


def test_readers_polling_during_a_forced_rerun_see_old_or_new_never_a_mix(published: Path, cli, cli_bg):
    """The reader API and plain pyarrow read u2i (several part files) over and over while a
    forced rerun with a different k replaces it: every read is the whole old or the whole new."""
    out = out_dir(published)
    output = published / "data" / "recall"
    multi = ["--set", "output.max_rows_per_file=7000", "--set", "output.row_group_rows=3000"]
    res = cli(published, *FORCED, *multi)
    assert res.returncode == 0, res.stderr
    old = sort(read_arrow("small", "u2i", DATE, output=output))
    old_run = manifest(out)["run_id"]
    folder = out / "u2i" / f"dt={DATE}"
    assert len(list(folder.glob("part-*.parquet"))) >= 3
    seen = {"api": [], "api-latest": [], "pyarrow": []}
    errors = 0
    proc = cli_bg(published, *FORCED, *multi, "--set", "recall.u2i.k=15")
    tail = 20
    while tail:
        if proc.poll() is not None:
            tail -= 1
        seen["api"].append(sort(read_arrow("small", "u2i", DATE, output=output)))
        seen["api-latest"].append(sort(read_arrow("small", "u2i", output=output)))
        try:
            seen["pyarrow"].append(sort(pq.read_table(folder)))
        except (OSError, pa.ArrowInvalid):
            errors += 1  # listed the old files, opened after the swap: not found, read again
    assert proc.wait() == 0, proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    new_m = assert_consistent(out)
    assert new_m["run_id"] != old_run
    new = sort(read_arrow("small", "u2i", DATE, output=output))
    assert new.num_rows == new_m["tables"]["u2i"]["rows"] != old.num_rows
    for reader, tables in seen.items():
        kinds = ["old" if t.equals(old) else "new" if t.equals(new) else f"MIX({t.num_rows})" for t in tables]
        assert all(k in ("old", "new") for k in kinds), (reader, sorted(set(kinds)))
        assert "old" in kinds and "new" in kinds, (reader, len(kinds))
        last_old = max(i for i, k in enumerate(kinds) if k == "old")
        assert kinds.index("new") > last_old, f"{reader} went back from the new partition to the old"
    print(f"reads: {[len(v) for v in seen.values()]}, plain pyarrow retries {errors}")


def test_a_reader_that_listed_the_old_files_never_reads_part_of_the_new_run(published: Path, cli):
    """The race the polling test may not hit: a plain reader lists the part files, a rerun swaps
    the partition, then the reader opens them. Each run numbers its part files after the ones
    it replaces, so the reader gets "not found" (and reads again), never some of the new files."""
    out = out_dir(published)
    multi = ["--set", "output.max_rows_per_file=7000"]
    assert cli(published, *FORCED, *multi).returncode == 0
    folder = out / "u2i" / f"dt={DATE}"
    listed = ds.dataset(folder, format="parquet")  # lists the files now, opens them later
    assert len(listed.files) >= 3
    res = cli(published, *FORCED, *multi, "--set", "recall.u2i.k=25")  # more rows, more files
    assert res.returncode == 0, res.stderr
    with pytest.raises(FileNotFoundError):
        listed.to_table()
    fresh = ds.dataset(folder, format="parquet").to_table()
    assert fresh.num_rows == manifest(out)["tables"]["u2i"]["rows"]
