"""A newcomer's first hour and an on-call person's first look, through the real CLI: the demo
from any folder, "not found" messages that name the fix, a usage line without a verb, one bad
spec that does not hide the others, the reader finding the project through $RECALL_ROOT, a run
on a terminal (a few lines and labelled progress bars), and the readers' types of `dt` as the
README gives them."""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recall.cli import build_parser, verbs
from recall.store.reader import read_table
from tests.support.cli import environment, run_cli, run_on_terminal
from tests.support.failures import assert_refused, record
from tests.support.files import logged, out_dir
from tests.support.project import REPO, TINY_SPEC, spec_text, tiny_project, tiny_spec, write_spec

END = dt.date(2026, 11, 10)


def recall_in(folder: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m recall ARGS...` run from `folder`, without --root (and without RECALL_ROOT unless in `env`)."""
    return subprocess.run([sys.executable, "-m", "recall", *args], capture_output=True, text=True, cwd=folder,
                          env={**environment(None), **(env or {})}, timeout=timeout)


def test_recall_without_a_verb_prints_one_clean_usage_line(tmp_path):
    res = recall_in(tmp_path)
    record("command line: no verb", res)
    line = assert_refused(res, 2, "no VERB given; usage: recall [--root DIR] VERB [ARGS], VERB one of run, ",
                          "see `recall --help`")
    assert "recall: recall" not in line
    named = line.split("VERB one of ")[1].split(";")[0].split(", ")
    assert named == verbs(build_parser()) and {"run", "nearline", "serve", "demo"} <= set(named)
    res = recall_in(tmp_path, "run")
    line = assert_refused(res, 2, "recall: run: the following arguments are required: JOB", "see `recall run --help`")
    assert "recall: recall" not in line
    res = recall_in(tmp_path, "rnu")
    assert_refused(res, 2, "recall: argument VERB: invalid choice: 'rnu'")


@pytest.mark.parametrize("args", [("run", "example"), ("check", "example"), ("status",), ("status", "--check"),
                                  ("cron", "show"), ("demo",)], ids=" ".join)
def test_not_found_names_the_fix(args, tmp_path):
    """From a folder that is not a project, with the project named nowhere: each says so and how."""
    empty = tmp_path / "not-a-project"
    empty.mkdir()
    res = recall_in(empty, *args, env={"RECALL_ROOT": str(empty)})
    record(f"not found: recall {' '.join(args)} outside a project", res)
    if args == ("status", "--check"):  # a monitoring check answers on stdout, as Nagios reads it
        assert res.returncode == 3 and res.stdout.startswith(f"RECALL UNKNOWN: no jobs/ folder in {empty}"), res
        assert "--root DIR" in res.stdout and "RECALL_ROOT" in res.stdout
        return
    assert_refused(res, 2, str(empty), "--root DIR", "RECALL_ROOT")


def test_an_input_path_not_found_says_where_it_was_looked_for(tmp_path):
    root = tiny_project(tmp_path / "project", END, days=4)
    res = run_cli(root, "run", "tiny", "--date", str(END), "--set", 'input.path="data/elsewhere"')
    assert_refused(res, 3, f"input path does not exist: {root / 'data' / 'elsewhere'}",
                   f"[input] path 'data/elsewhere' is taken from the project folder {root}", "--root DIR", "RECALL_ROOT")


def test_one_bad_spec_does_not_hide_the_others_from_cron_show(tmp_path):
    root = tmp_path / "project"
    tiny_spec(root, "good", job='schedule = "30 2 * * *"')
    tiny_spec(root, "late", job='schedule = "0 5 * * *"')
    write_spec(root, "broken", text=spec_text(TINY_SPEC).replace("factors = 8", "factor = 8"))
    tab = tmp_path / "tab"
    res = run_cli(root, "cron", "show", "--tabfile", str(tab))
    record("cron show: one bad spec among three", res)
    assert_refused(res, 2, f"1 spec(s) in {root / 'jobs'} cannot be scheduled (the other 2 entries are above)",
                   f"{root / 'jobs' / 'broken.toml'}: unknown key 'factor' in [model]")
    assert "# recall:" in res.stdout and "job good: next runs" in res.stdout and "job late: next runs" in res.stdout
    res = run_cli(root, "cron", "install", "--tabfile", str(tab))  # install still refuses, touching nothing
    assert_refused(res, 2, "broken.toml", "unknown key 'factor'")
    assert not tab.exists()


@pytest.mark.slow
def test_demo_works_from_any_folder(tmp_path):
    """`recall demo` from a folder that is not a project runs the example of the checkout it is
    installed from; its own synthetic data has no bad rows."""
    res = recall_in(tmp_path, "demo")
    record("demo from an empty folder", res)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"project folder: {REPO}\n")
    date = re.search(r"example (\d{4}-\d\d-\d\d): (published|already published)", res.stdout).group(1)
    assert "\nu2i: " in res.stdout and "\nmanifest: " in res.stdout
    m = json.loads((REPO / "data" / "recall" / "example" / "_manifest" / f"dt={date}.json").read_text())
    assert m["input"]["bad_rows"] == 0 and m["input"]["checks"] == []
    assert not any(tmp_path.iterdir()), "the demo wrote into the current folder"


def test_read_table_takes_a_relative_output_from_recall_root(tmp_path, monkeypatch):
    root = tiny_project(tmp_path / "project", END, days=4)
    assert run_cli(root, "run", "tiny", "--date", str(END)).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("RECALL_ROOT", raising=False)
    with pytest.raises(LookupError, match=re.escape(f"nothing published for job tiny under {elsewhere}/data/recall "
                                                    "(data/recall from the current folder; set RECALL_ROOT")):
        read_table("tiny")
    monkeypatch.setenv("RECALL_ROOT", str(root))
    frame = read_table("tiny")
    assert len(frame) == json.loads((out_dir(root, "tiny") / "_manifest" / f"dt={END}.json").read_text()
                                    )["tables"]["u2i"]["rows"]
    assert len(read_table("tiny", "popular", output=root / "data" / "recall")) == 20  # absolute: as given


def test_a_run_on_a_terminal_shows_a_few_lines_and_labelled_bars(tmp_path):
    root = tmp_path / "project"
    tiny_project(root, END, days=6)
    write_spec(root, "tiny", text=spec_text(dict(TINY_SPEC, holdout_days=1, iterations=400)))
    res = run_on_terminal(root, "run", "tiny", "--date", str(END), "--set", "recall.u2i.batch_size=50")
    assert res.returncode == 0, res.stderr
    screen = res.stderr.replace("\r\n", "\n")
    # what stays on the screen once the bars are gone: the text after each line's last carriage return
    stays = [line.rsplit("\r", 1)[-1].strip() for line in screen.split("\n")]
    stays = [line for line in stays if line]
    assert len(stays) == 2, screen  # the input read, the holdout's recall
    assert re.fullmatch(rf"tiny {END}: [\d,]+ rows from 4 file\(s\) in 2026-11-07\.\.{END}, 0 bad; "
                        r"[\d,]+ users x [\d,]+ items", stays[0]), stays[0]
    assert re.fullmatch(rf"tiny {END}: holdout recall@10 0\.\d{{4}} \(popular baseline 0\.\d{{4}}\)", stays[1])
    for label, unit in (("holdout: ALS", "iteration"), ("ALS", "iteration"), ("u2i", "batch")):  # labelled bars
        assert re.search(rf"\r{re.escape(label)}: +\d+%\|.*\| \d+/\d+ \[.*{unit}", screen), label
    assert "INFO" not in screen and "step " not in screen
    assert res.stdout.startswith(f"tiny {END}: published u2i ")
    log = logged(root, "tiny")
    assert "| INFO    | " in log and "step train done" in log  # INFO goes to the log file
    quiet = run_cli(root, "run", "tiny", "--date", str(END), "--force")  # not a terminal, as under cron
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_each_reader_types_dt_as_the_readme_says(tmp_path):
    root = tiny_project(tmp_path / "project", END, days=4)
    assert run_cli(root, "run", "tiny", "--date", str(END)).returncode == 0
    table = out_dir(root, "tiny") / "u2i"
    section = (REPO / "README.md").read_text().split("### The `dt` column in other readers")[1].split("\n#")[0]
    said = {cells[1].strip(): cells[3].strip() for line in section.splitlines()
            if line.startswith("| ") and len(cells := line.split("|")) == 5}
    assert said["pyarrow"].startswith("string") and "dictionary of strings" in said["pyarrow"]
    assert said["pandas"] == "category" and said["DuckDB"].startswith("DATE") and said["Spark"] == "DATE"
    assert str(ds.dataset(table, format="parquet", partitioning="hive").schema.field("dt").type) == "string"
    assert str(pq.read_table(table).schema.field("dt").type) == "dictionary<values=string, indices=int32, ordered=0>"
    assert isinstance(pd.read_parquet(table)["dt"].dtype, pd.CategoricalDtype)
    kinds = duckdb.connect().execute(f"SELECT DISTINCT typeof(dt) FROM read_parquet('{table}/*/*.parquet', "
                                     "hive_partitioning = true)").fetchall()
    assert kinds == [("DATE",)]
