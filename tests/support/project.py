"""Throwaway project folders: a job spec (one template, sized by its arguments) over a synthetic log."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from recall.samples.synth import SynthSpec, generate

REPO = Path(__file__).resolve().parent.parent.parent
RUN_DATE = dt.date(2026, 11, 20)
DATE = RUN_DATE.isoformat()
PREVIOUS = (RUN_DATE - dt.timedelta(days=1)).isoformat()
FORCED = ["run", "small", "--date", DATE, "--force"]  # a forced rerun of the published DATE

SMALL = SynthSpec(users=1500, items=400, rows_per_day=2500, days=12, clusters=12, seed=11)
TINY = SynthSpec(users=300, items=120, rows_per_day=600, days=12, clusters=6, seed=5)

SPEC = """\
[job]
lookback_days = {lookback}
{job}

[input]
path = "data/log"
event_weights = {{ view = 1.0, click = 3.0, purchase = 10.0 }}

[model]
factors = {factors}
iterations = {iterations}
threads = 1

[recall.u2i]
k = {k}

[recall.i2i]
k = {i2i_k}

[recall.popular]
k = {popular_k}

[output]
keep_days = {keep_days}
{output}

[evaluate]
holdout_days = {holdout_days}
k = {k}

[autotune]
every_days = 0  # the settings search has its own tests (test_autotune.py); elsewhere it would slow every run
{extra}
"""
SMALL_SPEC = dict(lookback=10, factors=16, iterations=6, k=20, i2i_k=10, popular_k=30, holdout_days=1)
TINY_SPEC = dict(lookback=4, factors=8, iterations=3, k=10, i2i_k=5, popular_k=20, holdout_days=0)


def spec_text(size: dict = SMALL_SPEC, job: str = "", keep_days: int = 14, output: str = "", extra: str = "") -> str:
    """A job spec; `job` and `output` are extra lines for [job] and [output], `extra` more sections."""
    return SPEC.format(**size, job=job, keep_days=keep_days, output=output, extra=extra)


def write_spec(root: Path, name: str = "small", extra: str = "", text: str | None = None) -> Path:
    """jobs/<name>.toml: the small spec (plus `extra` sections), or `text`."""
    path = root / "jobs" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else spec_text(extra=extra))
    return path


def yesterday() -> dt.date:
    """Yesterday in UTC, the time zone of the test specs (what `recall run` defaults to)."""
    return dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)


def tiny_spec(root: Path, name: str, job: str = "", keep_days: int = 14, extra: str = "", output: str = "") -> Path:
    """jobs/<name>.toml with the tiny spec (operations tests: many fast runs)."""
    return write_spec(root, name, text=spec_text(TINY_SPEC, job, keep_days, output, extra))


def tiny_project(root: Path, end: dt.date, days: int = 12, name: str = "tiny", **spec) -> Path:
    """A project folder with jobs/<name>.toml over a tiny synthetic log ending on `end`."""
    generate(root / "data" / "log", end, SynthSpec(**{**vars(TINY), "days": days}))
    tiny_spec(root, name, **spec)
    return root
