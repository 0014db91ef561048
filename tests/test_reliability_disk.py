"""A full disk, for real: the output root or the log folder on a small tmpfs (CI runs as root and
mounts one; elsewhere these tests skip, saying why). Output full: exit 5, nothing published, the
previous data byte-identical, staging removed. Log disk full: the failure still reaches stderr
with the right exit code."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.support.cli import resume, wait_for_stderr
from tests.support.failures import assert_refused, record
from tests.support.files import assert_consistent, out_dir, published_files, staging_left, success_markers
from tests.support.project import DATE, FORCED





@contextmanager
def tmpfs(mountpoint: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `mountpoint` for the block."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8); CI runs as root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def resize(mountpoint: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], check=True)


def used(mountpoint: Path) -> int:
    st = os.statvfs(mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def fill(mountpoint: Path, name: str = "filler") -> None:
    """Append to a file until the file system is full."""
    with open(mountpoint / name, "ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


@contextmanager
def output_on_tmpfs(root: Path) -> Iterator[Path]:
    """The project's output root moved onto a fresh tmpfs, published files and all."""
    output = root / "data" / "recall"
    saved = root / "data" / "recall.saved"
    output.rename(saved)
    with tmpfs(output, 16 << 20) as mount:
        shutil.copytree(saved, mount, dirs_exist_ok=True)
        yield mount


def test_output_disk_full_exits_5_publishes_nothing_and_keeps_the_previous_data(published: Path, cli):
    with output_on_tmpfs(published) as mount:
        out = out_dir(published)
        before, markers = published_files(out), success_markers(out)
        u2i_bytes = (out / "u2i" / f"dt={DATE}" / "part-00000.parquet").stat().st_size
        resize(mount, used(mount) + u2i_bytes // 2)  # room for half a u2i table
        res = cli(published, *FORCED)
        record("disk full: output tmpfs during writing", res)
        line = assert_refused(res, 5, "cannot write output under", "No space left on device")
        assert "nothing was published" in line
        assert success_markers(out) == markers
        assert published_files(out) == before
        assert staging_left(out) == []
        res = cli(published, "run", "small", "--date", "2026-11-21", "--set", "input.require_run_date=false",
                  "--set", "evaluate.holdout_days=0")
        record("disk full: output tmpfs, a new date", res)
        said = res.stderr.splitlines()  # the run date has no partition: a warning says so, then the failure
        assert said[0].startswith("recall: warning: small 2026-11-21: no data for 1 day(s) of the window")
        assert res.returncode == 5 and len(said) == 2 and said[1].startswith("recall: cannot write output under")
        assert "No space left on device" in said[1]
        assert published_files(out) == before and staging_left(out) == []
        resize(mount, 16 << 20)  # space freed: the next run publishes
        res = cli(published, *FORCED)
        assert res.returncode == 0, res.stderr
        assert_consistent(out)
        assert staging_left(out) == []


def test_output_disk_full_at_the_manifest_undoes_the_tables_already_swapped_in(published: Path, cli_bg):
    """The disk fills after u2i is swapped in: the manifest (the commit point) cannot be written,
    and the run puts the previous u2i back before it exits 5."""
    with output_on_tmpfs(published) as mount:
        out = out_dir(published)
        before, markers = published_files(out), success_markers(out)
        proc = cli_bg(published, *FORCED, env={"RECALL_TEST_PAUSE_AT": "published-u2i"})
        wait_for_stderr(proc, "test pause at published-u2i")
        fill(mount)
        res = resume(proc)
        record("disk full: output tmpfs at the manifest", res)
        assert_refused(res, 5, "No space left on device", "_manifest")
        assert success_markers(out) == markers
        assert published_files(out) == before
        assert staging_left(out) == []
        (mount / "filler").unlink()


def test_full_log_disk_does_not_silence_a_failure(published: Path, cli):
    with tmpfs(published / "fulllogs", 64 << 10) as logs:
        fill(logs)
        res = cli(published, *FORCED, "--set", 'log.dir="fulllogs"', "--set", 'input.path="data/nothing"')
        record("log disk full: a failing run (missing input)", res)
        assert res.returncode == 3, res.stderr
        lines = res.stderr.strip().splitlines()
        assert lines[-1].startswith("recall: input path does not exist")
        assert any("cannot write log file" in line and "No space left on device" in line for line in lines)
        assert len(lines) == 2, res.stderr
        out = out_dir(published)
        before = published_files(out)
        res = cli(published, *FORCED, "--set", 'log.dir="fulllogs"', "--set", "recall.u2i.k=0")
        record("log disk full: a bad spec", res)
        assert_refused(res, 2, "[recall.u2i] k must be at least 1")
        res = cli(published, *FORCED, "--set", 'log.dir="fulllogs"')
        record("log disk full: a good run", res)
        assert res.returncode == 0, res.stderr
        assert "cannot write log file" in res.stderr
        assert_consistent(out)
        assert published_files(out) != before


def test_log_disk_filling_during_a_run_keeps_the_exit_code(published: Path, cli_bg):
    """The log file opens fine, then its disk fills, then the quality gate refuses: loguru
    reports each lost record on stderr, and the run still ends with exit 4 and its line."""
    with tmpfs(published / "smalllogs", 256 << 10) as logs:
        out = out_dir(published)
        before = published_files(out)
        proc = cli_bg(published, *FORCED, "--set", 'log.dir="smalllogs"', "--set", "gate.min_rows=100000000",
                         env={"RECALL_TEST_PAUSE_AT": "before-success"})
        wait_for_stderr(proc, "test pause at before-success")
        fill(logs)
        fill(logs, "small.log")  # and the room left in the log file's last page
        res = resume(proc)
        stderr = res.stderr
        record("log disk fills mid-run, then the gate refuses", res,
               note="loguru reports each lost record; the last line is the run's")
        assert res.returncode == 4, stderr
        assert "No space left on device" in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("recall: ") and "min_rows" in last, last
        assert published_files(out) == before and staging_left(out) == []
