"""Operations through the real CLI: the per-job lock between real processes (stopped and killed
with real signals), catch-up, backfill, the run history and `recall status`."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from croniter import croniter

from recall.run.batch import catch_up_dates, summary, worst
from recall.errors import LockBusy
from recall.ops.lock import job_lock
from tests.support.cli import run_cli, start_cli, wait_for
from tests.support.files import history, logged, out_dir, partitions, snapshot
from tests.support.project import DATE, tiny_project, write_spec, yesterday



# --- the lock --------------------------------------------------------------------------


def test_second_run_of_a_job_exits_75_and_leaves_the_winners_files_alone(project, tmp_path):
    # a tiny rotation: a loser that so much as opened the log sink would rotate the winner's file
    write_spec(project, extra='[log]\nrotation = "2 KB"\nretention = 50\n')
    write_spec(project, "other")
    out = out_dir(project, "small")
    began = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    winner_log = tmp_path / "winner.out"
    winner = start_cli(project, "run", "small", "--date", DATE, "--set", "model.iterations=60",
                       "--set", "model.factors=48", output=winner_log)
    try:
        def holding() -> bool:
            try:
                holder = json.loads((out / "_lock").read_text() or "{}")
            except (OSError, ValueError):
                return False
            return holder.get("pid") == winner.pid and "window" in logged(project, "small")

        wait_for(winner, holding, "the winner held the lock and logged its start")
        winner.send_signal(signal.SIGSTOP)  # frozen mid-run, lock held: its files must not change now
        time.sleep(0.2)
        logs_before = {k: v for k, v in snapshot(project / "logs").items() if k.startswith("small")}
        out_before = snapshot(out)
        for args in (["run", "small", "--date", DATE], ["run", "small", "--date", DATE, "--force"],
                     ["backfill", "small", "--from", DATE, "--to", DATE], ["run", "small", "--catch-up"]):
            res = run_cli(project, *args)
            assert res.returncode == 75, (args, res.stdout, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            match = re.search(rf"job small is already running: pid {winner.pid} \(since (\S+), host ", lines[0])
            assert match, lines[0]
            since = dt.datetime.fromisoformat(match.group(1))
            assert began <= since <= dt.datetime.now(dt.timezone.utc)
        # a different job runs to the end while `small` holds its lock
        other = run_cli(project, "run", "other", "--date", DATE)
        assert other.returncode == 0, other.stderr
        assert (out_dir(project, "other") / "_LATEST").read_text().strip() == DATE
        assert {k: v for k, v in snapshot(project / "logs").items() if k.startswith("small")} == logs_before
        assert snapshot(out) == out_before
    finally:
        winner.send_signal(signal.SIGCONT)
        winner.wait(timeout=300)
    assert winner.returncode == 0, winner_log.read_text()
    runs = history(project, "small")
    manifest = json.loads((out / "_manifest" / f"dt={DATE}.json").read_text())
    assert [r["run_id"] for r in runs] == [manifest["run_id"]] and runs[0]["status"] == "published"
    records = logged(project, "small")
    assert set(re.findall(r"run=(\S+)", records)) == {manifest["run_id"]}
    assert len(list((project / "logs").glob("small.*.gz"))) >= 1  # the winner did rotate its own log


def test_lock_is_freed_when_the_holder_is_killed_and_its_staging_is_cleared_next_run(project, tmp_path):
    out = out_dir(project, "small")
    log = tmp_path / "killed.out"
    victim = start_cli(project, "run", "small", "--date", DATE, "--set", "recall.u2i.batch_size=4", output=log)
    try:
        wait_for(victim, lambda: any(out.glob("_staging/*/u2i/dt=*/part-*.parquet")),
                 "the run started writing its staged u2i table")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    leftovers = list((out / "_staging").iterdir())
    assert leftovers and not (out / "_LATEST").exists() and (out / "_lock").exists()
    res = run_cli(project, "run", "small", "--date", DATE)
    assert res.returncode == 0, res.stderr  # the kernel dropped the dead run's lock
    assert not any((out / "_staging").iterdir())
    assert (out / "_LATEST").read_text().strip() == DATE
    assert "cleared 1 staging folder(s) left by earlier runs" in logged(project, "small")


def test_lock_names_a_live_holder_only(tmp_path):
    path = tmp_path / "job" / "_lock"
    with job_lock(path, "j"):
        with pytest.raises(LockBusy, match=rf"job j is already running: pid {os.getpid()} \(since "):
            with job_lock(path, "j"):
                pass
        dead = subprocess.Popen(["true"])
        dead.wait()
        with open(path, "r+b") as fh:  # as the file reads between a new holder's flock and its write
            fh.write(json.dumps({"pid": dead.pid, "since": "2026-01-01T00:00:00+00:00",
                                 "host": socket.gethostname()}).encode())
        with pytest.raises(LockBusy, match=r"job j is already running: another process holds"):
            with job_lock(path, "j"):
                pass
    with job_lock(path, "j"):  # released with the block
        assert json.loads(path.read_text())["pid"] == os.getpid()


# --- catch-up and backfill -------------------------------------------------------------


def test_catch_up_dates_rule():
    d = dt.date(2026, 11, 20)
    assert catch_up_dates(None, set(), d, 14) == ([d], [])
    assert catch_up_dates("2026-11-20", {"2026-11-20"}, d, 14) == ([], [])
    assert catch_up_dates("2026-11-25", {"2026-11-25"}, d, 14) == ([], [])
    assert catch_up_dates("2026-11-17", {"2026-11-17"}, d, 14) == ([d - dt.timedelta(days=2),
                                                                    d - dt.timedelta(days=1), d], [])
    run, dropped = catch_up_dates("2026-11-10", {"2026-11-10"}, d, 3)
    assert run == [dt.date(2026, 11, 18), dt.date(2026, 11, 19), d]
    assert dropped == [dt.date(2026, 11, 11) + dt.timedelta(days=i) for i in range(7)]


def test_summary_and_worst_code():
    rows = [("2026-11-18", "published", 0, "u2i 10"), ("2026-11-19", "failed", 3, "input"),
            ("2026-11-20", "failed", 4, "gate"), ("2026-11-21", "not run", "", "stopped")]
    assert worst(rows) == 4 and worst(rows[:1]) == 0
    table = summary(rows).splitlines()
    assert table[0].split() == ["date", "status", "exit", "detail"] and len(table) == 5


def test_catch_up_runs_missed_dates_in_order_and_retries_a_failed_night(tmp_path):
    y = yesterday()
    day = [y - dt.timedelta(days=i) for i in range(8)]  # day[i] is i days before yesterday
    root = tiny_project(tmp_path, y, days=14, keep_days=3)
    held = tmp_path / "held"
    assert run_cli(root, "run", "tiny", "--date", day[6].isoformat()).returncode == 0
    shutil.move(root / "data" / "log" / f"dt={day[1]}", held)  # that night's input is late
    res = run_cli(root, "run", "tiny", "--catch-up")
    assert res.returncode == 3
    assert f"not catching up {day[5]}..{day[3]} (3 date(s)): older than [output] keep_days = 3" in res.stdout
    table = [line.split()[:3] for line in res.stdout.splitlines() if re.match(r"\d{4}-", line)]
    assert table == [[str(day[2]), "published", "0"], [str(day[1]), "failed", "3"], [str(day[0]), "not", "run"]]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"worst exit 3 on {day[1]}" in lines[0]
    assert (out_dir(root, "tiny") / "_LATEST").read_text().strip() == str(day[2])
    shutil.move(held, root / "data" / "log" / f"dt={day[1]}")  # it arrived: the next catch-up retries it
    res = run_cli(root, "run", "tiny", "--catch-up")
    assert res.returncode == 0, res.stderr
    assert f"catching up 2 date(s): {day[1]}, {day[0]}" in res.stdout
    res = run_cli(root, "run", "tiny", "--catch-up")
    assert res.returncode == 0 and f"nothing to catch up (published through {y})" in res.stdout
    ran = [r["date"] for r in history(root, "tiny")]
    assert ran == [str(d) for d in (day[6], day[2], day[1], day[1], day[0])]
    assert partitions(root, "tiny") == [str(d) for d in (day[2], day[1], day[0])]  # keep_days = 3


def test_catch_up_with_nothing_published_runs_only_yesterday(tmp_path):
    root = tiny_project(tmp_path, yesterday(), days=6)
    res = run_cli(root, "run", "tiny", "--catch-up")
    assert res.returncode == 0, res.stderr
    assert f"catching up 1 date(s): {yesterday()}" in res.stdout
    assert partitions(root, "tiny") == [str(yesterday())]
    res = run_cli(root, "run", "tiny", "--catch-up", "--date", str(yesterday()))
    assert res.returncode == 2 and "--catch-up and --date" in res.stderr


def test_backfill_stops_at_the_first_failure_unless_keep_going_and_exits_with_the_worst_code(tmp_path):
    end = dt.date(2026, 11, 10)
    d1, d2, d3 = (str(end - dt.timedelta(days=i)) for i in (2, 1, 0))
    root = tiny_project(tmp_path, end, days=8)
    shutil.rmtree(root / "data" / "log" / f"dt={d2}")
    res = run_cli(root, "backfill", "tiny", "--from", d1, "--to", d3)
    assert res.returncode == 3
    rows = [line.split()[:3] for line in res.stdout.splitlines()[1:]]
    assert rows == [[d1, "published", "0"], [d2, "failed", "3"], [d3, "not", "run"]]
    assert len(res.stderr.strip().splitlines()) == 1 and "1 of 3 date(s) failed" in res.stderr
    assert partitions(root, "tiny") == [d1]
    res = run_cli(root, "backfill", "tiny", "--from", d1, "--to", d3, "--keep-going")
    assert res.returncode == 3
    rows = [line.split()[:3] for line in res.stdout.splitlines()[1:]]
    assert rows == [[d1, "skipped", "0"], [d2, "failed", "3"], [d3, "published", "0"]]
    assert partitions(root, "tiny") == [d1, d3]
    # every date fails, for different reasons: the exit code is the worst one, not the first or last
    res = run_cli(root, "backfill", "tiny", "--from", d1, "--to", d3, "--keep-going", "--force",
                  "--set", "gate.min_rows=1000000000")
    assert res.returncode == 4
    rows = [line.split()[:3] for line in res.stdout.splitlines()[1:]]
    assert rows == [[d1, "failed", "4"], [d2, "failed", "3"], [d3, "failed", "4"]]
    assert "3 of 3 date(s) failed, worst exit 4" in res.stderr
    assert partitions(root, "tiny") == [d1, d3]  # the gate kept what was published


# --- history and status ----------------------------------------------------------------


def test_every_run_is_recorded_in_the_history(tmp_path):
    end = dt.date(2026, 11, 10)
    root = tiny_project(tmp_path, end, days=6)
    assert run_cli(root, "run", "tiny", "--date", str(end)).returncode == 0
    assert run_cli(root, "run", "tiny", "--date", str(end)).returncode == 0  # skipped
    assert run_cli(root, "run", "tiny", "--date", "2026-11-11").returncode == 3  # no partition for it
    res = run_cli(root, "run", "tiny", "--date", str(end), "--force", "--set", 'log.rotation="sometimes"')
    assert res.returncode == 2 and "[log]" in res.stderr
    runs = history(root, "tiny")
    assert [(r["date"], r["status"], r["exit_code"]) for r in runs] == [
        (str(end), "published", 0), (str(end), "skipped", 0), ("2026-11-11", "failed", 3), (str(end), "failed", 2)]
    manifest = json.loads((out_dir(root, "tiny") / "_manifest" / f"dt={end}.json").read_text())
    assert runs[0]["run_id"] == manifest["run_id"]
    assert runs[0]["rows"] == {name: t["rows"] for name, t in manifest["tables"].items()}
    assert len({r["run_id"] for r in runs}) == 4
    for r in runs:
        started = dt.datetime.fromisoformat(r["started"])
        assert abs((dt.datetime.now(dt.timezone.utc) - started).total_seconds()) < 600
        assert 0 <= r["duration_s"] < 300
    assert "no partition dt=2026-11-11" in runs[2]["error"]
    assert "[log] settings refused by loguru" in runs[3]["error"] and "sometimes" in runs[3]["error"]
    assert not runs[0].get("error")


def test_status_shows_each_job(tmp_path):
    end = dt.date(2026, 11, 10)
    root = tiny_project(tmp_path, end, days=6, job='schedule = "15 3 * * *"')
    tiny_project(tmp_path, end, days=6, name="idle")  # never run, not scheduled
    assert run_cli(root, "run", "tiny", "--date", str(end)).returncode == 0
    assert run_cli(root, "run", "tiny", "--date", "2026-11-11").returncode == 3
    res = run_cli(root, "status")
    assert res.returncode == 0, res.stderr
    table, detail = res.stdout.split("\n\n")  # the table, then detail lines: never cut
    header, *rows = table.splitlines()
    assert header.split() == ["job", "latest", "age", "u2i", "i2i", "recall", "backtest", "blend", "duration",
                              "next", "run", "last", "failure"]
    assert [r.split()[0] for r in rows] == ["idle", "tiny"]
    idle, tiny = rows
    assert idle.split()[1:3] == ["-", "-"]
    manifest = json.loads((out_dir(root, "tiny") / "_manifest" / f"dt={end}.json").read_text())
    run = history(root, "tiny")[0]
    nxt = croniter("15 3 * * *", dt.datetime.now()).get_next(dt.datetime).strftime("%Y-%m-%d %H:%M")
    fields = tiny.split()
    assert fields[1] == str(end) and re.fullmatch(r"\d+m", fields[2])
    assert fields[3] == f"{manifest['tables']['u2i']['rows']:,}" and fields[4] == f"{manifest['tables']['i2i']['rows']:,}"
    assert fields[7] == ",".join(f"{n}:{w:g}" for n, w in manifest["blend"]["weights"].items())
    assert fields[8] == f"{run['duration_s']:.1f}s"
    assert nxt in tiny and "2026-11-11 exit 3 (run " in tiny
    failed = history(root, "tiny")[1]
    assert detail.splitlines() == [f"tiny: last failure 2026-11-11 exit 3 (run {failed['run_id']}, started "
                                   f"{failed['started']}): {failed['error']}"]
    assert failed["error"].endswith("or set input.require_run_date=false to run without it")  # whole
    one = run_cli(root, "status", "tiny")
    assert one.returncode == 0 and len(one.stdout.split("\n\n")[0].splitlines()) == 2
    missing = run_cli(root, "status", "nope")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


LOST_IN_A_FINALIZER = """
import os, signal, sys, threading, time
from recall.errors import Interrupted
from recall.ops import signals
from recall.timer import Timer

signals.install()


class Busy:
    def __del__(self):  # Python drops an exception a signal handler raises in here
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass


threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
timer = Timer()
try:
    for _ in range(500):  # 1 s of steps that spend their time in finalizers
        with timer.step("work", quiet=True):
            for _ in range(2):
                Busy()
    print("the loop ran to its end")
except Interrupted as exc:
    print(f"stopped: {exc}")
"""


def test_a_signal_raised_inside_a_finalizer_still_stops_the_run_at_the_next_step():
    """A signal arriving while a finalizer runs loses its first raise (Python ignores it there);
    the next step boundary raises it again."""
    res = subprocess.run([sys.executable, "-c", LOST_IN_A_FINALIZER], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "stopped: terminated by SIGTERM", (res.stdout, res.stderr)
