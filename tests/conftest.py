"""Fixtures: throwaway projects over a small synthetic log, a published baseline, the CLI."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recall.samples.synth import generate
from tests.support.cli import kill, run_cli, start_cli
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
