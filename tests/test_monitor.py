"""Monitoring through the real CLI: the node-exporter textfile after every run, the on_success /
on_failure commands (what they are told, and that nothing they do changes the run's outcome),
`recall status --json` and the Nagios-style `recall status --check`."""
from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.failures import assert_refused, record
from tests.support.files import history, manifest, out_dir
from tests.support.project import TINY_SPEC, spec_text, tiny_project, write_spec

END = dt.date(2026, 11, 10)
D1, D2, MISSING = "2026-11-09", "2026-11-10", "2026-11-11"  # the log ends on D2: MISSING fails (exit 3)

HOOKS = """
[monitor]
textfile = "metrics/tiny.prom"
on_success = 'echo "$RECALL_STATUS $RECALL_DATE $(grep -c "$RECALL_RUN_ID" "$RECALL_OUTPUT/_history.jsonl") $(cat "$RECALL_OUTPUT/_manifest/dt=$RECALL_DATE.json" | grep -c "$RECALL_RUN_ID")" >> success.txt'
on_failure = 'env | grep ^RECALL_ | sort > failure.env'
"""


def project(tmp_path: Path, monitor: str = HOOKS) -> Path:
    root = tiny_project(tmp_path / "project", END, days=8)
    write_spec(root, "tiny", text=spec_text(dict(TINY_SPEC, holdout_days=1), job='schedule = "30 2 * * *"',
                                            extra=monitor))
    return root


# --- the textfile ----------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z_]+="[^"\\]*",?)*)\} (-?[0-9.e+-]+)$')


def parse_textfile(text: str) -> dict[str, list[tuple[dict, float]]]:
    """The samples of a node-exporter textfile, checked line by line against the text format:
    every metric has its HELP and TYPE before its samples."""
    assert text.endswith("\n")
    helped, typed, samples = set(), set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind == "gauge", line
            typed.add(name)
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert name in helped and name in typed, f"{name} without HELP or TYPE"
            pairs = dict(re.findall(r'([a-z_]+)="([^"]*)"', labels))
            samples.setdefault(name, []).append((pairs, float(value)))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    found = [v for ls, v in samples[name] if all(ls.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_textfile_hooks_and_status_after_each_run(tmp_path):
    root = project(tmp_path)
    out, prom = out_dir(root, "tiny"), root / "metrics" / "tiny.prom"
    assert run_cli(root, "run", "tiny", "--date", D1).returncode == 0
    first_inode = prom.stat().st_ino
    res = run_cli(root, "run", "tiny", "--date", D2)
    record("monitor: a run that publishes, with a textfile and on_success", res)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    m, run = manifest(out, D2), history(root, "tiny")[-1]
    samples = parse_textfile(prom.read_text())
    assert prom.stat().st_ino != first_inode, "rewritten in place, not replaced whole"
    assert sorted(p.name for p in prom.parent.iterdir()) == ["tiny.prom"]  # no temporary left
    assert value(samples, "recall_last_run_exit_code", job="tiny") == 0
    assert [value(samples, "recall_last_run_status", job="tiny", status=s) for s in ("published", "skipped", "failed")] \
        == [1, 0, 0]
    assert value(samples, "recall_last_run_duration_seconds", job="tiny") == pytest.approx(run["duration_s"])
    ended = dt.datetime.fromisoformat(run["started"]).timestamp() + run["duration_s"]
    assert value(samples, "recall_last_run_timestamp_seconds", job="tiny") == pytest.approx(ended)
    assert value(samples, "recall_last_success_timestamp_seconds", job="tiny") == pytest.approx(ended)
    day = dt.datetime.fromisoformat(f"{D2}T00:00:00+00:00").timestamp()
    assert value(samples, "recall_latest_date_timestamp_seconds", job="tiny") == day
    assert value(samples, "recall_latest_published_timestamp_seconds", job="tiny") == \
        dt.datetime.fromisoformat(m["published_at"]).timestamp()
    for table, info in m["tables"].items():
        assert value(samples, "recall_table_rows", job="tiny", table=table) == info["rows"]
    assert value(samples, "recall_holdout_recall", job="tiny", k="10") == pytest.approx(m["metrics"]["merged"]["recall"])
    assert value(samples, "recall_backtest_recall", job="tiny") == pytest.approx(m["backtest"]["recall"])
    assert value(samples, "recall_days_without_data", job="tiny") == 0
    # on_success ran once per published date, after the history and the manifest had the run
    assert (root / "success.txt").read_text() == f"published {D1} 1 1\npublished {D2} 1 1\n"
    assert run_cli(root, "run", "tiny", "--date", D2).returncode == 0  # skipped: no on_success
    assert (root / "success.txt").read_text().count("\n") == 2
    assert value(parse_textfile(prom.read_text()), "recall_last_run_status", job="tiny", status="skipped") == 1

    res = run_cli(root, "run", "tiny", "--date", MISSING)
    record("monitor: a run that fails, with a textfile and on_failure", res)
    line = assert_refused(res, 3, f"no partition dt={MISSING}")
    failed = history(root, "tiny")[-1]
    told = dict(row.split("=", 1) for row in (root / "failure.env").read_text().splitlines())
    assert told["RECALL_JOB"] == "tiny" and told["RECALL_DATE"] == MISSING and told["RECALL_EXIT_CODE"] == "3"
    assert told["RECALL_STATUS"] == "failed" and told["RECALL_RUN_ID"] == failed["run_id"]
    assert told["RECALL_ERROR"] == line.removeprefix("recall: ") == failed["error"]
    assert told["RECALL_OUTPUT"] == str(out) and told["RECALL_LOG"] == str(root / "logs" / "tiny.log")
    samples = parse_textfile(prom.read_text())
    assert value(samples, "recall_last_run_exit_code", job="tiny") == 3
    assert value(samples, "recall_last_run_status", job="tiny", status="failed") == 1
    assert value(samples, "recall_last_success_timestamp_seconds", job="tiny") > 0  # the skipped run's
    assert value(samples, "recall_table_rows", job="tiny", table="u2i") == m["tables"]["u2i"]["rows"]

    # status --json: everything above, as data
    res = run_cli(root, "status", "--json")
    assert res.returncode == 0, res.stderr
    (state,) = json.loads(res.stdout)["jobs"]
    assert state["latest"] == D2 and state["run_id"] == m["run_id"] and state["rows"] == {
        t: i["rows"] for t, i in m["tables"].items()}
    assert state["holdout"]["recall"] == m["metrics"]["merged"]["recall"]
    assert state["backtest_recall"] == m["backtest"]["recall"]
    assert state["last_run"]["exit_code"] == 3 and state["last_failure"]["error"] == failed["error"]
    assert state["last_success"]["status"] == "skipped" and state["schedule"] == "30 2 * * *"
    assert state["check"]["status"] == "CRITICAL"

    # status --check: the last run failed, then the data's age
    res = run_cli(root, "status", "--check", "--max-age", "1000000")
    record("status --check: the last run failed", res)
    assert res.returncode == 2, res.stdout
    assert res.stdout.startswith(f"RECALL CRITICAL: tiny: last run failed ({MISSING}, exit 3: {failed['error']}) | "
                                 "'tiny age'=")
    assert len(res.stdout.splitlines()) == 1 and res.stderr == ""
    assert run_cli(root, "run", "tiny", "--date", D2, "--force").returncode == 0
    res = run_cli(root, "status", "--check", "--max-age", "1000000")
    age = (time.time() - day) / 3600 - 24
    assert res.returncode == 0, res.stdout
    assert re.fullmatch(rf"RECALL OK: 1 job\(s\) fresh: tiny {D2} \((\d+\.\d)h old\) \| 'tiny age'=(\d+)s;;3600000000\n",
                        res.stdout), res.stdout
    assert float(re.search(r"\((\d+\.\d)h old\)", res.stdout).group(1)) == pytest.approx(age, abs=0.2)
    res = run_cli(root, "status", "--check", "--max-age", "24")
    record("status --check: the latest date is too old", res)
    assert res.returncode == 2 and res.stdout.startswith(f"RECALL CRITICAL: tiny: latest {D2} is "), res.stdout
    assert "h old (max 24h) |" in res.stdout


def test_check_says_unknown_without_scheduled_jobs_and_refuses_a_lone_max_age(tmp_path):
    root = tiny_project(tmp_path / "project", END, days=4)  # tiny has no schedule
    res = run_cli(root, "status", "--check")
    assert res.returncode == 3 and res.stdout.startswith("RECALL UNKNOWN: no scheduled job to check"), res.stdout
    res = run_cli(root, "status", "tiny", "--check")  # named: checked all the same
    assert res.returncode == 2 and res.stdout.startswith("RECALL CRITICAL: tiny: nothing published"), res.stdout
    assert_refused(run_cli(root, "status", "--max-age", "3"), 2, "--max-age goes with --check")


# --- commands that fail, hang or linger ------------------------------------------------------

BAD_HOOKS = """
[monitor]
on_success = 'echo "about to fail" >&2; exit 7'
on_failure = 'sleep 300 & echo $! > sleeper.pid; wait'
timeout = 1
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_command_that_fails_or_hangs_never_changes_the_outcome(tmp_path):
    root = project(tmp_path, BAD_HOOKS)
    res = run_cli(root, "run", "tiny", "--date", D2)
    record("monitor: on_success exits 7", res)
    assert res.returncode == 0 and "published" in res.stdout, res.stderr
    assert res.stderr.splitlines() == ["about to fail", f"recall: warning: tiny {D2}: [monitor] on_success exited 7 "
                                       "after " + res.stderr.split(" after ")[1].split("s:")[0] + "s: 'echo \"about to "
                                       "fail\" >&2; exit 7'; the run's outcome stands"]
    assert manifest(out_dir(root, "tiny"), D2)["date"] == D2
    began = time.monotonic()
    res = run_cli(root, "run", "tiny", "--date", MISSING)
    took = time.monotonic() - began
    record("monitor: on_failure hangs past its timeout", res)
    assert res.returncode == 3, res.stderr
    said = res.stderr.splitlines()  # the command's warning, then the run's own line, last as always
    assert said[0] == (f"recall: warning: tiny {MISSING}: [monitor] on_failure was killed after [monitor] timeout = "
                       "1s; the run's outcome stands")
    assert len(said) == 2 and said[1].startswith(f"recall: no partition dt={MISSING}")
    assert took < 30, f"the run waited {took:.0f}s for its on_failure command"
    pid = int((root / "sleeper.pid").read_text())
    assert not alive(pid), "the command's child outlived it"
