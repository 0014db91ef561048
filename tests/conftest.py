"""Shared fixtures: a throwaway project folder with a small synthetic log, and a CLI runner."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recall.samples.synth import SynthSpec, generate

RUN_DATE = dt.date(2026, 11, 20)
SMALL = SynthSpec(users=1500, items=400, rows_per_day=2500, days=12, clusters=12, seed=11)
REPO = Path(__file__).resolve().parent.parent

SPEC = """\
[job]
lookback_days = 10

[input]
path = "data/log"
event_weights = {{ view = 1.0, click = 3.0, purchase = 10.0 }}

[model]
factors = 16
iterations = 6
threads = 1

[recall.u2i]
k = 20

[recall.i2i]
k = 10

[recall.popular]
k = 30

[evaluate]
holdout_days = 1
k = 20
{extra}
"""


def write_spec(root: Path, name: str = "small", extra: str = "", text: str | None = None) -> Path:
    path = root / "jobs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else SPEC.format(extra=extra))
    return path


@pytest.fixture(scope="session")
def small_log(tmp_path_factory) -> Path:
    """A synthetic Hive-partitioned log, generated once per session (copied per test)."""
    folder = tmp_path_factory.mktemp("log") / "log"
    generate(folder, RUN_DATE, SMALL)
    return folder


@pytest.fixture
def project(tmp_path: Path, small_log: Path) -> Path:
    """A project folder: jobs/small.toml reading data/log (a copy of the session's log)."""
    import shutil

    shutil.copytree(small_log, tmp_path / "data" / "log")
    write_spec(tmp_path)
    return tmp_path


def run_cli(root: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m recall --root ROOT ARGS...` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RECALL_ROOT", None)
    return subprocess.run([sys.executable, "-m", "recall", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=root)


@pytest.fixture
def cli():
    return run_cli
