"""A real cron daemon runs the entry `recall cron install` put into root's own crontab.

Starts Debian's cron (/usr/sbin/cron) unless one already runs, installs an every-minute entry for
a tiny job with its own output folder, waits (at most 150 s) for the u2i table and the job's log,
then removes the entry, puts the crontab back exactly as it was and stops the daemon it started.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.files import logged
from tests.support.project import tiny_project, yesterday


pytestmark = pytest.mark.cron

CRON = Path("/usr/sbin/cron")
WAIT_S = 150


def cron_pids() -> list[int]:
    """Live (not zombie) processes named cron."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, state = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2]
        if name == "cron" and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def crontab_l() -> bytes | None:
    res = subprocess.run(["crontab", "-l"], capture_output=True)
    if res.returncode != 0:
        assert b"no crontab for" in res.stderr, res.stderr
        return None
    return res.stdout


@pytest.fixture
def daemon(tmp_path):
    if not CRON.exists():
        pytest.skip(f"no cron daemon at {CRON}: install Debian's cron package (.ci/run does)")
    if cron_pids():
        yield None  # someone else's daemon: use it, leave it running
        return
    if os.geteuid() != 0:
        pytest.skip("no cron daemon runs and only root can start one")
    log = tmp_path / "crond.out"
    proc = subprocess.Popen([str(CRON), "-f"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    time.sleep(1)
    if proc.poll() is not None:
        pytest.skip(f"cron could not be started (exit {proc.returncode}): {log.read_text().strip()}")
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def own_crontab():
    """Root's crontab, put back exactly as it was, whatever the test did."""
    saved = crontab_l()
    yield saved
    if saved is None:
        if crontab_l() is not None:
            subprocess.run(["crontab", "-r"], check=True)
    elif crontab_l() != saved:
        subprocess.run(["crontab", "-"], input=saved, check=True)
    assert crontab_l() == saved


def test_cron_daemon_runs_the_installed_entry(tmp_path, daemon, own_crontab):
    day = yesterday()
    root = tiny_project(tmp_path / "proj", day, days=6, job='schedule = "* * * * *"',
                        output=f'path = "{tmp_path / "cron-output"}"')
    out = tmp_path / "cron-output" / "tiny"
    recall = Path(sys.executable).parent / "recall"
    exe = [str(recall)] if recall.exists() else [sys.executable, "-m", "recall"]
    res = subprocess.run([*exe, "--root", str(root), "cron", "install"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    try:
        installed = crontab_l()
        assert installed.startswith(own_crontab or b"") and installed.count(b"# recall:") >= 1
        deadline = time.monotonic() + WAIT_S
        while not ((out / "_LATEST").exists() and "published" in logged(root, "tiny")):
            if daemon is not None and daemon.poll() is not None:
                pytest.fail(f"the cron daemon stopped (exit {daemon.returncode})")
            if time.monotonic() > deadline:
                cron_out = root / "logs" / "cron.out"
                pytest.fail(f"cron did not publish within {WAIT_S}s; crontab:\n{installed.decode()}\n"
                            f"cron.out: {cron_out.read_text() if cron_out.exists() else '(none)'}")
            time.sleep(1)
    finally:
        removed = subprocess.run([*exe, "--root", str(root), "cron", "remove"], capture_output=True, text=True)
    assert removed.returncode == 0 and "removed 1 entry" in removed.stdout, removed.stderr
    assert (crontab_l() or b"") == (own_crontab or b"")  # an empty crontab is removed, not kept empty
    assert (out / "_LATEST").read_text().strip() == day.isoformat()
    assert (out / "u2i" / f"dt={day}" / "_SUCCESS").exists()
    assert f"catching up 1 date(s): {day}" in (root / "logs" / "cron.out").read_text()
