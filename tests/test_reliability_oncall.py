"""What an on-call night can bring, through the real CLI: input partitions that are links, or
cannot be read; a day without data; links planted in the job folder; state files that hold
garbage; a run stopped by SIGTERM or SIGINT; a read-only job folder. Each case: the exit code,
one stderr line saying what happened (or the warnings that say what was recovered), and the
published data as it was, or as the message says."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recall.store.reader import read_table
from tests.support.cli import LogTail, run_cli, wait_for
from tests.support.failures import assert_refused, assert_untouched, record
from tests.support.files import assert_consistent, history, manifest, out_dir, published_files, success_markers
from tests.support.project import TINY_SPEC, spec_text, tiny_project, write_spec, yesterday

END = dt.date(2026, 11, 10)
D1, D2, D3 = "2026-11-08", "2026-11-09", "2026-11-10"  # D1 and D2 published; D3 is the next night
SPEC = dict(TINY_SPEC, holdout_days=1)  # a holdout, so the gate and the backtest have metrics


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project whose job `tiny` published D1 and D2 (with metrics and a backtest)."""
    root = tmp_path_factory.mktemp("oncall") / "project"
    tiny_project(root, END, days=8)
    write_spec(root, "tiny", text=spec_text(SPEC))
    res = run_cli(root, "backfill", "tiny", "--from", D1, "--to", D2)
    assert res.returncode == 0, res.stderr
    return root


@pytest.fixture
def root(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(template, copy, symlinks=True)
    return copy


def job(root: Path) -> Path:
    return out_dir(root, "tiny")


def run(root: Path, *args: str, **kwargs):
    return run_cli(root, "run", "tiny", *args, **kwargs)


def lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


# --- input partitions ------------------------------------------------------------------------


def test_symlinked_partitions_are_read_not_skipped(root: Path, tmp_path: Path):
    """A data-lake snapshot pointing older days to other storage: every day of the window is read."""
    log = root / "data" / "log"
    window = ["2026-11-07", D1, D2, D3]
    want = sum(pq.read_metadata(log / f"dt={d}" / "part-00000.parquet").num_rows for d in window)
    elsewhere = tmp_path / "cold-storage"
    elsewhere.mkdir()
    for day in ("2026-11-07", D1):  # a linked folder
        shutil.move(log / f"dt={day}", elsewhere / f"dt={day}")
        (log / f"dt={day}").symlink_to(elsewhere / f"dt={day}", target_is_directory=True)
    part = log / f"dt={D2}" / "part-00000.parquet"  # and a linked file
    shutil.move(part, elsewhere / "d2.parquet")
    part.symlink_to(elsewhere / "d2.parquet")
    res = run(root, "--date", D3)
    record("input: symlinked partitions and files", res)
    assert res.returncode == 0, res.stderr
    m = assert_consistent(job(root), D3)
    assert m["input"]["rows"] == want
    assert [Path(f["path"]).parent.name for f in m["input"]["files"]] == [f"dt={d}" for d in window]
    assert m["window"]["days_without_data"] == []


def broken_link(log: Path) -> str:
    shutil.rmtree(log / f"dt={D2}")
    (log / f"dt={D2}").symlink_to(log.parent / "unmounted" / f"dt={D2}")
    return f"broken symbolic link in the input: {log / f'dt={D2}'} -> "


def link_loop(log: Path) -> str:
    (log / f"dt={D2}" / "again").symlink_to(log, target_is_directory=True)
    return f"symbolic link loop in the input: {log / f'dt={D2}' / 'again'}"


def unreadable(log: Path) -> str:
    (log / f"dt={D2}").chmod(0)
    return f"cannot list input folder {log / f'dt={D2}'}: Permission denied"


@pytest.mark.parametrize("make", [broken_link, link_loop, unreadable], ids=["broken link", "link loop", "unreadable"])
def test_input_that_cannot_be_read_whole_is_refused(make, root: Path):
    out = job(root)
    before, markers = published_files(out), success_markers(out)
    fragment = make(root / "data" / "log")
    try:
        res = run(root, "--date", D3, as_user=True)
    finally:
        (root / "data" / "log" / f"dt={D2}").chmod(0o755) if make is unreadable else None
    record(f"input: {make.__name__.replace('_', ' ')} partition", res)
    assert_refused(res, 3, fragment)
    assert_untouched(out, before, markers)


def test_a_day_without_data_warns_on_stderr_and_shows_in_status(root: Path):
    shutil.rmtree(root / "data" / "log" / f"dt={D2}")
    res = run(root, "--date", D3)
    record("input: a day without data inside the window", res)
    assert res.returncode == 0, res.stderr
    assert lines(res) == [f"recall: warning: tiny {D3}: no data for 1 day(s) of the window 2026-11-07..{D3}: {D2} "
                          f"(no dt= partition under {root / 'data' / 'log'})"]
    assert manifest(job(root), D3)["window"]["days_without_data"] == [D2]
    status = run_cli(root, "status")
    assert status.returncode == 0, status.stderr
    assert f"tiny: no data for {D2} in the window of {D3}" in status.stdout.splitlines()
    check = run_cli(root, "status", "tiny", "--check", "--max-age", "1000000")
    assert check.returncode == 1, check.stdout  # WARNING
    assert check.stdout.startswith(f"RECALL WARNING: tiny: no data for {D2} in the window of {D3} | 'tiny age'=")


# --- links planted in the job folder ---------------------------------------------------------


def plant(out: Path, name: str, victim: Path) -> Path:
    """Replace the job folder's entry `name` with a link to `victim` (a file or a folder outside)."""
    path = out / name
    if path.is_dir():
        shutil.rmtree(path)
        path.symlink_to(victim, target_is_directory=True)
    else:
        path.unlink(missing_ok=True)
        path.symlink_to(victim / "precious.txt")
    return path


@pytest.mark.parametrize("name", ["_lock", "_history.jsonl", "_staging", "_manifest", f"u2i/dt={D2}"])
def test_a_link_planted_in_the_job_folder_is_never_followed(name: str, root: Path, tmp_path: Path):
    out = job(root)
    (out / "_staging").mkdir(exist_ok=True)
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "precious.txt").write_text("not recall's\n")
    (victim / "old-run").mkdir()  # what a staging clean-up would delete
    link = plant(out, name, victim)
    before = published_files(out)
    res = run(root, "--date", D3)
    record(f"job folder: {name} is a symbolic link out of it", res)
    assert_refused(res, 5, f"refusing to use {link}: it is a symbolic link", "remove the link")
    assert sorted(p.name for p in victim.iterdir()) == ["old-run", "precious.txt"]
    assert (victim / "precious.txt").read_text() == "not recall's\n"
    assert published_files(out) == before
    assert not (out / "u2i" / f"dt={D3}").exists()


# --- state files that hold garbage -----------------------------------------------------------


def test_garbage_in_latest_is_rebuilt_and_never_wedges_status_the_reader_or_a_run(root: Path):
    out = job(root)
    (out / "_LATEST").write_bytes(b"\x00\x9f\xff garbage \xfe" * 3)
    status = run_cli(root, "status")
    assert status.returncode == 0, status.stderr
    assert f"tiny: {out / '_LATEST'} holds " in status.stdout and "not a date" in status.stdout
    assert status.stdout.splitlines()[1].split()[1] == D2  # the newest published date, from the manifests
    assert len(read_table("tiny", output=root / "data" / "recall")) == manifest(out, D2)["tables"]["u2i"]["rows"]
    res = run(root, "--date", D3)
    record("state: binary garbage in _LATEST, next run", res)
    assert res.returncode == 0, res.stderr
    assert len(lines(res)) == 1 and lines(res)[0].startswith(f"recall: warning: tiny {D3}: {out / '_LATEST'} holds ")
    assert lines(res)[0].endswith(f"not a date: rewritten as {D2}, the newest published date")
    assert (out / "_LATEST").read_text() == f"{D3}\n"


def test_text_garbage_in_latest_does_not_break_catch_up(tmp_path: Path):
    y = yesterday()
    root = tiny_project(tmp_path / "project", y, days=6)
    assert run_cli(root, "run", "tiny", "--date", str(y - dt.timedelta(days=1))).returncode == 0
    (out_dir(root, "tiny") / "_LATEST").write_text("see the wiki\n")
    res = run_cli(root, "run", "tiny", "--catch-up")
    record("state: text garbage in _LATEST, catch-up", res)
    assert res.returncode == 0, res.stderr
    assert f"catching up 1 date(s): {y}" in res.stdout
    assert "'see the wiki\\n' (13 bytes), not a date: rewritten as" in res.stderr
    assert (out_dir(root, "tiny") / "_LATEST").read_text() == f"{y}\n"


def test_garbage_in_the_history_and_in_a_marker_is_read_around_then_repaired_saying_so(root: Path):
    out = job(root)
    runs = history(root, "tiny")
    with open(out / "_history.jsonl", "ab") as fh:
        fh.write(b"\x00\xff\xfe binary\n[1, 2]\n{\"date\": 5}\n")
    marker = out / "i2i" / f"dt={D1}" / "_SUCCESS"
    good = marker.read_bytes()
    marker.write_bytes(b"\x00" * 10)
    status = run_cli(root, "status")
    assert status.returncode == 0, status.stderr
    assert f"tiny: {out / '_history.jsonl'}: 3 unreadable line(s) skipped" in status.stdout
    assert f"tiny: {marker} is not a partition marker (it holds " in status.stdout
    res = run(root, "--date", D3)
    record("state: garbage in _history.jsonl and in a _SUCCESS, next run", res)
    assert res.returncode == 0, res.stderr
    said = lines(res)
    assert said[0].startswith(f"recall: warning: tiny {D3}: {marker} is not a partition marker")
    assert said[0].endswith(f"rebuilt from the manifest of {D1} (run {manifest(out, D1)['run_id']}, "
                            f"{manifest(out, D1)['tables']['i2i']['rows']} rows in 1 file(s), as the partition holds)")
    assert said[1:] == [f"recall: warning: tiny {D3}: {out / '_history.jsonl'}: dropped 3 unreadable line(s) "
                        f"(not run records); kept {len(runs) + 1} run(s)"]
    assert json.loads(marker.read_bytes()) == json.loads(good)
    assert [r["run_id"] for r in history(root, "tiny")][:-1] == [r["run_id"] for r in runs]


def test_a_corrupt_manifest_is_rebuilt_and_the_backtest_and_gate_say_what_they_lost(root: Path):
    out = job(root)
    path = out / "_manifest" / f"dt={D2}.json"
    good = json.loads(path.read_text())
    path.write_text('{"job": "tiny", "tables": ')  # cut short by hand
    status = run_cli(root, "status")
    assert f"tiny: {path} is not JSON" in status.stdout
    with pytest.raises(LookupError, match=f"tiny {D2} cannot be read: .* is not JSON"):
        read_table("tiny", date=D2, output=root / "data" / "recall")
    res = run(root, "--date", D3)
    record("state: corrupt manifest of the previous date, next run", res)
    assert res.returncode == 0, res.stderr
    said = lines(res)
    assert len(said) == 2, res.stderr
    assert said[0].startswith(f"recall: warning: tiny {D3}: {path} is not JSON")
    assert said[0].endswith(f"rebuilt from the _SUCCESS markers of its tables (u2i, i2i, popular, item_side, run {good['run_id']}), "
                            f"without its metrics; the bad file is kept as dt={D2}.json.corrupt")
    assert said[1] == (f"recall: warning: tiny {D3}: the [gate] max_recall_drop check has no reference: the manifest "
                       f"of {D2} was rebuilt from its tables' _SUCCESS markers, without its metrics")
    rebuilt = assert_consistent(out, D2)
    assert rebuilt["run_id"] == good["run_id"] and rebuilt["tables"] == good["tables"] and rebuilt["rebuilt"]
    assert (out / "_manifest" / f"dt={D2}.json.corrupt").read_text() == '{"job": "tiny", "tables": '
    assert manifest(out, D3)["backtest"]["date"] == D2 and "recall" in manifest(out, D3)["backtest"]


# --- stopped by a signal ---------------------------------------------------------------------


@pytest.mark.parametrize("signum,code,said", [(signal.SIGTERM, 143, "terminated by SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted by SIGINT"),
                                              (signal.SIGHUP, 129, "terminated by SIGHUP")])
def test_a_run_stopped_by_a_signal_leaves_a_trace_and_cleans_up(signum, code, said, root: Path, cli_bg):
    out = job(root)
    before, markers = published_files(out), success_markers(out)
    log = LogTail(root, "tiny")
    proc = cli_bg(root, "run", "tiny", "--date", D2, "--force", "--set", "model.iterations=1000000",
                  "--set", "evaluate.holdout_days=0")
    wait_for(proc, lambda: log.has(" users x "), "training starts")
    os.kill(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=60)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    record(f"signal: {signal.Signals(signum).name} while training", res)
    assert_refused(res, code, f"recall: {said}; tiny {D2} was not published; the previous tables are as they were")
    assert_untouched(out, before, markers)
    last = history(root, "tiny")[-1]
    assert (last["status"], last["exit_code"], last["date"]) == ("failed", code, D2)
    assert last["error"].startswith(said)
    status = run_cli(root, "status")
    assert f"{D2} exit {code} (run " in status.stdout
    assert f"tiny: last failure {D2} exit {code} (run {last['run_id']}" in status.stdout


# --- a read-only job folder ------------------------------------------------------------------


def test_a_read_only_job_folder_says_the_date_was_published_and_latest_did_not_move(root: Path):
    out = job(root)
    out.chmod(0o555)  # _LATEST cannot be replaced; the tables and manifests beneath can
    try:
        res = run(root, "--date", D3, as_user=True)
    finally:
        out.chmod(0o755)
    record("read-only job folder: a new date", res)
    line = assert_refused(res, 5, f"{D3} is published (its tables and manifest are in place) but {out / '_LATEST'} "
                                  f"could not be moved to it: Permission denied",
                          f"readers that follow _LATEST still get {D2}", "the job's next run moves _LATEST")
    assert "nothing was published" not in line
    assert_consistent(out, D3)
    assert (out / "_LATEST").read_text() == f"{D2}\n"
    last = history(root, "tiny")[-1]
    assert (last["status"], last["exit_code"]) == ("published", 5)
    res = run(root, "--date", D3)  # writable again: already published, and _LATEST catches up
    assert res.returncode == 0 and "already published" in res.stdout, res.stderr
    assert (out / "_LATEST").read_text() == f"{D3}\n"
    assert "died after its manifest: _LATEST brought up to date" in res.stderr
