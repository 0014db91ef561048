"""Fixtures: throwaway projects over a small synthetic log, a published baseline, the CLI."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recall.samples.synth import generate
from tests.support.cli import kill, run_cli, run_in_process, start_cli
from tests.support.engines import ENGINES
from tests.support.project import DATE, PREVIOUS, RUN_DATE, SMALL, write_spec


@pytest.fixture(scope="session")
def small_log(tmp_path_factory) -> Path:
    """A synthetic Hive-partitioned log, generated once per session (copied per test)."""
    folder = tmp_path_factory.mktemp("log") / "log"
    generate(folder, RUN_DATE, SMALL)
    return folder


@pytest.fixture
def project(tmp_path: Path, small_log: Path) -> Path:
    """A project folder: jobs/small.toml reading data/log (a copy of the session's log)."""
    shutil.copytree(small_log, tmp_path / "data" / "log")
    write_spec(tmp_path)
    return tmp_path


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    """Each engine in turn (tests/support/engines.py)."""
    return request.param


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The test session's one local[2] Spark session: in-process runs of the Spark engine reuse it
    (CLI runs start their own, as cron does)."""
    from recall.engines.spark.session import spark_session
    from recall.spec.sections import SparkSection
    from tests.support.engines import QUICK_JVM

    session, owned = spark_session(SparkSection(master="local[2]", conf=QUICK_JVM), "recall tests",
                                   tmp_path_factory.mktemp("spark") / "spark.log")
    yield session
    if owned:
        session.stop()


@pytest.fixture
def run_engine(request):
    """`recall ...` for an engine: the CLI as a process for the local engine; the same CLI code
    in this process for Spark, on the shared session (a Spark process costs a JVM start)."""

    def run(engine: str, root: Path, *args: str) -> subprocess.CompletedProcess:
        if engine == "spark":
            request.getfixturevalue("spark")
            return run_in_process(root, *args)
        return run_cli(root, *args)

    return run


@pytest.fixture
def cli_bg() -> Iterator:
    """start_cli for a test; whatever it started and left running is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(root: Path, *args: str, env: dict | None = None, output: Path | None = None) -> subprocess.Popen:
        started.append(start_cli(root, *args, env=env, output=output))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            kill(proc)


@pytest.fixture(scope="session")
def published_template(tmp_path_factory) -> Path:
    """A project whose job `small` has published PREVIOUS and DATE (_LATEST = DATE)."""
    root = tmp_path_factory.mktemp("published") / "project"
    generate(root / "data" / "log", RUN_DATE, SMALL)
    write_spec(root)
    for date in (PREVIOUS, DATE):
        res = run_cli(root, "run", "small", "--date", date)
        assert res.returncode == 0, res.stderr
    return root


@pytest.fixture
def published(published_template: Path, tmp_path: Path) -> Path:
    """A private copy of the published baseline project."""
    root = tmp_path / "project"
    shutil.copytree(published_template, root)
    return root
