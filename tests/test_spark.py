"""The Spark engine against the local one, on local[2]: the same holdout quality and tables from
the same spec and log (parity), the same refusals of bad input, and a kill while the executors
write leaves the published data as it was. The engine-parametrised suites (tests/test_contract.py,
tests/test_commit_protocol.py) run the u2i contract and the commit protocol on Spark too.

In-process tests share one local[2] session (the engine reuses an active session); the CLI
tests start their own, as cron does."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from recall.contract import u2i_violations
from recall.engines import create
from recall.engines.spark.train import als_settings
from recall.errors import InputError
from recall.ingest.window import Window
from recall.jobs import load_job
from recall.run.nightly import RunOptions, run_job
from recall.sources import NAMES
from recall.spec.sections import ModelSection
from recall.timer import Timer
from tests.support.cli import LogTail, wait_for
from tests.support.crash import after_crash, killed, next_runs_succeed
from tests.support.engines import engine_args
from tests.support.failures import assert_refused, assert_untouched
from tests.support.files import manifest, out_dir, published_files, success_markers, table
from tests.support.project import DATE, FORCED, RUN_DATE
from tests.test_reliability_input import CASES

def spark_spec(root: Path, *overrides: str):
    return load_job(root / "jobs" / "small.toml", ['job.engine="spark"', 'spark.master="local[2]"', *overrides])


def test_als_settings_convert_implicit_to_spark():
    """Spark weighs a pair 1 + s and scales each row's ridge by its ratings: the mapping keeps the
    total penalty and feeds s = alpha * r - 1 with alpha 1 (train.py's derivation)."""
    got = als_settings(ModelSection(factors=32, regularization=0.2, alpha=5.0, iterations=7), n_users=300,
                       n_items=100, nnz=2000)
    assert got["regParam"] == pytest.approx(0.2 * 400 / 4000)
    assert (got["alpha"], got["implicitPrefs"], got["rank"], got["maxIter"]) == (1.0, True, 32, 7)


@pytest.mark.slow
def test_parity_with_the_local_engine(project: Path, tmp_path: Path, spark):
    """Same spec and log: the Spark engine reads the same rows, publishes tables of the same size
    that keep the same contract, and its holdout recall@100 is within 5% of the local engine's."""
    other = tmp_path / "spark-project"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("data"))
    shutil.copytree(project / "data" / "log", other / "data" / "log")
    same = ["recall.u2i.k=100", "evaluate.k=100"]
    local = run_job(load_job(project / "jobs" / "small.toml", same), RunOptions(RUN_DATE, project))
    sparked = run_job(spark_spec(other, *same), RunOptions(RUN_DATE, other))
    a, b = local.manifest, sparked.manifest
    assert (a.engine, b.engine) == ("local", "spark")
    for key in ("rows", "users", "items", "interactions", "bad_rows"):
        assert a.input[key] == b.input[key], key
    tables = ("u2i", "i2i", "popular")  # every user min(k, unseen allowed) rows; every item its neighbours
    assert {t: a.rows[t] for t in tables} == {t: b.rows[t] for t in tables}
    assert "item_side" in b.tables  # published for serving, as the local engine does
    assert b.metrics.merged.recall == pytest.approx(a.metrics.merged.recall, rel=0.05), (a.metrics, b.metrics)
    assert b.metrics.users_evaluated == a.metrics.users_evaluated
    assert b.metrics.relevant_pairs == a.metrics.relevant_pairs
    days = [(RUN_DATE - dt.timedelta(days=i)).isoformat() for i in range(10)]
    seen = ds.dataset(other / "data" / "log", format="parquet", partitioning="hive").to_table(
        columns=["user_id", "item_id"], filter=ds.field("dt").cast(pa.string()).isin(days))
    u2i = table(out_dir(other), "u2i")
    assert u2i_violations(u2i, seen, [], 100, set(NAMES)) == []
    assert len(manifest(out_dir(other))["tables"]["u2i"]["files"]) >= 1


INPUT_CASES = [c for c in CASES if c.code == 3]


@pytest.mark.slow
@pytest.mark.parametrize("c", INPUT_CASES, ids=[c.name for c in INPUT_CASES])
def test_bad_input_is_refused_as_the_local_engine_refuses_it(c, project: Path, spark):
    """Every bad-input case of the reliability suite: the Spark engine's one line is the local
    engine's (both exit 3)."""
    args = c.build(project)
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    window = Window(RUN_DATE, 10)
    lines = {}
    for engine in ("local", "spark"):
        spec = load_job(project / "jobs" / "small.toml", [*overrides, f'job.engine="{engine}"'])
        with create(spec, project, 2) as running, pytest.raises(InputError) as refused:
            running.prepare(window, Timer())
        lines[engine] = refused.value.line()
    if c.name in ("truncated parquet", "garbage parquet"):  # the reading library's own words differ
        assert lines["spark"].split(":")[0] == lines["local"].split(":")[0], lines
    elif c.name == "weights that are text":  # Spark's schema has no large_string: the type's name differs
        assert lines["spark"].split(" is ")[0] == lines["local"].split(" is ")[0], lines
    else:
        assert lines["spark"] == lines["local"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["missing run-date partition", "null user ids"])
def test_bad_input_through_the_cli(name: str, published: Path, cli):
    """The real command: exit 3, one stderr line (the JVM's own notes go to its log), nothing
    published, the previous output byte-identical."""
    c = next(c for c in CASES if c.name == name)
    out = out_dir(published)
    before, markers = published_files(out), success_markers(out)
    args = c.build(published)
    res = cli(published, *args, *engine_args("spark"))
    assert_refused(res, 3, *(f.replace("{rows}", "") for f in c.fragments))
    assert_untouched(out, before, markers)
    assert (published / "logs" / "small.spark.log").exists()


@pytest.mark.slow
def test_kill_while_the_executors_write(published: Path, cli, cli_bg):
    """SIGKILL the driver once tasks have staged u2i files: the published data is as it was, the
    JVM goes with its driver, and the next runs put things right."""
    out = out_dir(published)
    before = published_files(out)
    log = LogTail(published)
    proc = cli_bg(published, *FORCED, *engine_args("spark"), "--set", "spark.users_per_task=100")
    wait_for(proc, lambda: any(out.glob("_staging/*/u2i/dt=*/part-*.parquet")), "a task's u2i file", timeout=300)
    jvms = [pid for pid in descendants(proc.pid) if b"java" in cmdline(pid)]
    killed(proc)
    assert jvms, "no Spark JVM under the run"
    after_crash(published, before, "spark executors writing")
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in jvms) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in jvms), "the Spark JVM outlived its driver"
    assert "test pause" not in log.text()
    next_runs_succeed(published, cli, before, "spark executors writing")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def descendants(root: int) -> list[int]:
    """Every process under `root` (from /proc's parent links)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += children
        frontier = children
    return found
