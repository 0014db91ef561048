"""`recall cron show|install|remove` against tab files (python-crontab), and an installed entry's
command run the way cron runs it: `sh -c` from `/` with an empty environment."""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest
from croniter import croniter
from crontab import CronTab

from recall.ops import schedule
from tests.support.cli import run_cli
from tests.support.files import out_dir
from tests.support.project import tiny_project, tiny_spec, yesterday

# a user's crontab as people write them: env lines (one after the last job), odd spacing,
# a '%' in a command, comments, a disabled job, @reboot, a line that mentions "recall"
FOREIGN = (
    "# m h  dom mon dow   command\n"
    "MAILTO=ops@example.com\n"
    'GREETING="hello  world"\n'
    "\n"
    "0  1 * * *   /usr/bin/backup --date=$(date +\\%F)   # nightly backup\n"
    "@reboot /usr/local/bin/warm-cache\n"
    "#15 3 * * * /usr/bin/disabled-job\n"
    "*/5 * * * * echo recall:deadbeef:x >/dev/null  # recall:deadbeef:other-project\n"
    "PATH=/opt/bin:/usr/bin\n"
)


def project(root: Path, jobs: dict[str, str | None]) -> Path:
    """Specs in jobs/ with the given schedules (None: not scheduled); no data needed to install."""
    for name, expr in jobs.items():
        tiny_spec(root, name, job=f'schedule = "{expr}"' if expr else "")
    (root / "crontab").mkdir(exist_ok=True)
    (root / "crontab" / "environment").write_text(
        "# shared by every entry\nSHELL=/bin/sh\nPATH=/usr/local/bin:/usr/bin:/bin\nLANG=C.UTF-8\n"
        'GREETING="with space"\n')
    return root


def ours(tab: Path, root: Path) -> dict[str, object]:
    """This project's entries in a tab file, as python-crontab parses them, by job name."""
    tag = schedule.project_tag(root)
    return {job.comment[len(tag):]: job for job in CronTab(tabfile=str(tab)) if (job.comment or "").startswith(tag)}


@pytest.fixture
def tab(tmp_path: Path) -> Path:
    path = tmp_path / "user.tab"
    path.write_text(FOREIGN)
    return path


def test_install_twice_gives_one_entry_per_job_and_keeps_foreign_lines_byte_for_byte(tmp_path, tab):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *", "beta": "*/15 * * * *", "gamma": None})
    for _ in range(2):
        res = run_cli(root, "cron", "install", "--tabfile", str(tab))
        assert res.returncode == 0, res.stderr
        assert "installed 2 entries" in res.stdout
    text = tab.read_text()
    assert text.startswith(FOREIGN)
    added = text[len(FOREIGN):].splitlines()
    assert len(added) == 2
    entries = ours(tab, root)
    assert sorted(entries) == ["alpha", "beta"]
    assert str(entries["alpha"].slices) == "30 2 * * *" and str(entries["beta"].slices) == "*/15 * * * *"
    for name, job in entries.items():
        cmd = job.command
        recall = str(Path(sys.executable).parent / "recall")
        assert cmd.startswith(f"cd {root} && env SHELL=/bin/sh ")
        assert f"{recall} --root {root} run jobs/{name}.toml --catch-up >> {root}/logs/cron.out 2>&1" in cmd
        assert "GREETING='with space'" in cmd and "%" not in cmd
    assert (root / "logs").is_dir()
    rendered = (root / "crontab" / "recall.cron").read_text().splitlines()
    assert rendered[1:] == added
    res = run_cli(root, "cron", "remove", "--tabfile", str(tab))
    assert res.returncode == 0 and "removed 2 entries" in res.stdout
    assert tab.read_bytes() == FOREIGN.encode()
    res = run_cli(root, "cron", "remove", "--tabfile", str(tab))
    assert res.returncode == 0 and "removed 0 entries" in res.stdout


def test_reinstall_updates_entries_in_place_and_drops_unscheduled_jobs(tmp_path, tab):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *", "beta": "0 4 * * *"})
    assert run_cli(root, "cron", "install", "--tabfile", str(tab)).returncode == 0
    with tab.open("a") as fh:
        fh.write("0 5 * * * /usr/bin/after-ours\n")
    project(root, {"alpha": "45 3 * * 1-5", "beta": None})
    assert run_cli(root, "cron", "install", "--tabfile", str(tab)).returncode == 0
    lines = tab.read_text().splitlines(keepends=True)
    assert "".join(lines[:len(FOREIGN.splitlines())]) == FOREIGN
    assert lines[-1] == "0 5 * * * /usr/bin/after-ours\n"
    assert lines[-2].startswith("45 3 * * 1-5 cd ") and lines[-2].rstrip().endswith(":alpha")
    assert sorted(ours(tab, root)) == ["alpha"]


def test_projects_do_not_touch_each_others_entries(tmp_path, tab):
    a = project(tmp_path / "a", {"nightly": "30 2 * * *"})
    b = project(tmp_path / "b", {"nightly": "30 2 * * *"})
    assert run_cli(a, "cron", "install", "--tabfile", str(tab)).returncode == 0
    assert run_cli(b, "cron", "install", "--tabfile", str(tab)).returncode == 0
    assert list(ours(tab, a)) == ["nightly"] and list(ours(tab, b)) == ["nightly"]
    with_b = tab.read_bytes()
    assert run_cli(a, "cron", "remove", "--tabfile", str(tab)).returncode == 0
    assert not ours(tab, a) and list(ours(tab, b)) == ["nightly"]
    assert run_cli(a, "cron", "install", "--tabfile", str(tab)).returncode == 0
    assert run_cli(a, "cron", "remove", "--tabfile", str(tab)).returncode == 0
    assert run_cli(b, "cron", "remove", "--tabfile", str(tab)).returncode == 0
    assert tab.read_bytes() == FOREIGN.encode() and len(with_b) > len(FOREIGN)


@pytest.mark.parametrize("expr", ["61 * * * *", "* * * * * *", "@reboot", "0 0 31 2 *", "0 0 * * 1 %",
                                  "0 0 L * *", "*/0 * * * *", "30 2 * *"])
def test_bad_expression_exits_2_naming_it_and_leaves_the_tab_byte_identical(tmp_path, tab, expr):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *"})
    assert run_cli(root, "cron", "install", "--tabfile", str(tab)).returncode == 0
    before, stat = tab.read_bytes(), tab.stat()
    rendered = (root / "crontab" / "recall.cron").read_bytes()
    tiny_spec(root, "zeta", job=f'schedule = "{expr}"')
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"bad cron expression {expr!r}" in lines[0] and "zeta.toml" in lines[0]
    assert tab.read_bytes() == before and tab.stat().st_ino == stat.st_ino
    assert tab.stat().st_mtime_ns == stat.st_mtime_ns
    assert (root / "crontab" / "recall.cron").read_bytes() == rendered
    assert run_cli(root, "cron", "show").returncode == 2


INJECTING = ["a b", "a;b", "a%b", 'a"b', "a'b", "a\nb", "a$(id)", "a`id`"]


@pytest.mark.parametrize("name", INJECTING)
def test_job_names_that_could_inject_are_refused(tmp_path, tab, name):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *"})
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    tiny_spec(root, "named", job=f'schedule = "0 3 * * *"\nname = "{escaped}"')
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))
    assert res.returncode == 2 and "[job] name" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tab.read_bytes() == FOREIGN.encode()


@pytest.mark.parametrize("name", INJECTING)
def test_spec_file_names_that_could_inject_are_refused(tmp_path, tab, name):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *"})
    tiny_spec(root, "ok")
    (root / "jobs" / "ok.toml").rename(root / "jobs" / f"{name}.toml")
    text = (root / "jobs" / f"{name}.toml").read_text().replace("[job]\n", '[job]\nname = "safe"\nschedule = "0 3 * * *"\n')
    (root / "jobs" / f"{name}.toml").write_text(text)
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))
    assert res.returncode == 2, res.stdout
    line = res.stderr.strip()
    assert "\n" not in line and "spec file name" in line and repr(f"{name}.toml") in line
    assert tab.read_bytes() == FOREIGN.encode()


def test_project_folder_and_environment_that_could_inject_are_refused(tmp_path, tab):
    root = project(tmp_path / "pro%ject", {"alpha": "30 2 * * *"})
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))
    assert res.returncode == 2 and "the project folder" in res.stderr and "%" in res.stderr
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *"})
    (root / "crontab" / "environment").write_text("PATH=/usr/bin:/bin\nDATE=$(date +%F)\n")
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))
    assert res.returncode == 2 and "environment:2" in res.stderr
    assert tab.read_bytes() == FOREIGN.encode()


def test_a_failure_while_installing_leaves_the_tab_as_it_was(tmp_path, tab):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *"})
    (root / "crontab" / "recall.cron").mkdir()  # the rendered file cannot be written
    before = tab.stat()
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))
    assert res.returncode == 5 and "recall.cron" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tab.read_bytes() == FOREIGN.encode() and tab.stat().st_mtime_ns == before.st_mtime_ns
    (root / "crontab" / "recall.cron").rmdir()
    missing = tmp_path / "no-such-folder" / "tab"
    res = run_cli(root, "cron", "install", "--tabfile", str(missing))
    assert res.returncode == 5 and str(missing) in res.stderr and not missing.parent.exists()


def test_show_prints_entries_next_runs_and_whether_installed(tmp_path, tab):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *", "beta": "*/15 * * * *", "gamma": None})
    res = run_cli(root, "cron", "show", "--tabfile", str(tab))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4  # an entry line and a "next runs" line per scheduled job
    for entry_line, info, (job, expr) in zip(lines[::2], lines[1::2], [("alpha", "30 2 * * *"),
                                                                      ("beta", "*/15 * * * *")]):
        assert entry_line.startswith(expr + " cd ") and entry_line.endswith(f"{schedule.project_tag(root)}{job}")
        times = [dt.datetime.strptime(t, "%Y-%m-%d %H:%M") for t in re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d", info)]
        assert len(times) == 3 and times[0] > dt.datetime.now() - dt.timedelta(minutes=1)
        it = croniter(expr, times[0])
        assert [it.get_next(dt.datetime) for _ in range(2)] == times[1:]
        assert info.endswith(f"not installed in {tab}")
    assert tab.read_bytes() == FOREIGN.encode() and not (root / "crontab" / "recall.cron").exists()
    assert run_cli(root, "cron", "install", "--tabfile", str(tab)).returncode == 0
    assert run_cli(root, "cron", "show", "--tabfile", str(tab)).stdout.count(f"; installed in {tab}") == 2
    project(root, {"alpha": "0 1 * * *"})
    assert "installed, outdated" in run_cli(root, "cron", "show", "--tabfile", str(tab)).stdout


def test_splice_edge_cases():
    tag = "recall:0123abcd:"
    line = f"0 1 * * * /bin/run # {tag}job"
    # no trailing newline: one is added before our entries (cron needs it), nothing else changes
    assert schedule.splice("0 2 * * * /bin/x", tag, [line]) == (f"0 2 * * * /bin/x\n{line}\n", 0)
    # a commented-out entry of ours is replaced where it was; look-alikes are not ours
    text = (f"# 0 1 * * * /bin/old # {tag}job\n0 3 * * * echo {tag}job\n"
            f"0 4 * * * /bin/y # {tag}job extra\n0 5 * * * /bin/z # recall:0123abce:job\n")
    new, removed = schedule.splice(text, tag, [line])
    assert removed == 1 and new == line + "\n" + text.split("\n", 1)[1]
    assert schedule.splice(new, tag, []) == (text.split("\n", 1)[1], 1)
    # CRLF and bytes that are not UTF-8 survive
    odd = "0 2 * * * /bin/x\r\n# caf\udce9\n"
    assert schedule.splice(odd, tag, [])[0] == odd


def test_installed_entry_runs_under_cron_environment_from_slash(tmp_path):
    """The entry's command, exactly as installed, run by `sh -c` from `/` with no environment at all."""
    day = yesterday()
    root = tiny_project(tmp_path / "proj", day, job='schedule = "30 2 * * *"')
    (root / "crontab").mkdir()
    (root / "crontab" / "environment").write_text("SHELL=/bin/sh\nPATH=/usr/bin:/bin\n")
    tab = tmp_path / "tab"
    assert run_cli(root, "cron", "install", "--tabfile", str(tab)).returncode == 0
    command = ours(tab, root)["tiny"].command
    res = subprocess.run(["/bin/sh", "-c", command], cwd="/", env={}, capture_output=True, text=True, timeout=300)
    cron_out = (root / "logs" / "cron.out").read_text()
    assert res.returncode == 0, cron_out
    assert res.stdout == "" and res.stderr == ""  # everything went to logs/cron.out and the job's log
    out = out_dir(root, "tiny")
    assert (out / "_LATEST").read_text().strip() == day.isoformat()
    assert (out / "u2i" / f"dt={day}" / "_SUCCESS").exists()
    assert f"catching up 1 date(s): {day}" in cron_out and "published" in cron_out
    assert "published" in (root / "logs" / "tiny.log").read_text()


def test_root_may_follow_the_verb(tmp_path):
    root = project(tmp_path / "proj", {"alpha": "30 2 * * *"})
    res = subprocess.run([sys.executable, "-m", "recall", "cron", "show", "--root", str(root)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"--root {root} run jobs/alpha.toml" in res.stdout
