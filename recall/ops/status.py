"""`recall status`: per job, what is published, how old, how big, how long, what failed, what's
next; as a table with detail lines, as JSON (`--json`), or as a Nagios-style check (`--check`).

Everything comes from the job folder (manifests, _LATEST, the run history), read without
writing; a state file that holds garbage is read around and named in `problems`.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from recall.errors import RecallError
from recall.spec.cron import next_runs
from recall.spec.sections import JobSpec
from recall.store import history
from recall.store.layout import job_dir
from recall.store.records import Manifest, RunRecord
from recall.store.state import latest, manifest_dates, manifest_problem, marker_problem, read_latest, read_manifest

# Nagios plugin exit codes, used by `recall status --check` (not the run's exit codes)
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
CHECK_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
DEFAULT_MAX_AGE_H = 48.0


@dataclass
class JobState:
    """What one job's folder says about it."""

    job: str
    spec: str = ""
    output: str = ""
    schedule: str = ""
    timezone: str = "UTC"
    latest: str | None = None
    manifest: Manifest | None = None
    runs: list[RunRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # state files that hold garbage
    spec_error: str | None = None

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None

    @property
    def last_failure(self) -> RunRecord | None:
        return next((r for r in reversed(self.runs) if r.exit_code != 0), None)

    @property
    def last_success(self) -> RunRecord | None:
        return next((r for r in reversed(self.runs) if r.exit_code == 0), None)

    @property
    def days_without_data(self) -> list[str]:
        return list((self.manifest.window or {}).get("days_without_data") or []) if self.manifest else []

    def date_start(self) -> dt.datetime | None:
        """The start of the latest published date, in the job's time zone."""
        if not self.latest:
            return None
        return dt.datetime.combine(dt.date.fromisoformat(self.latest), dt.time(), tzinfo=ZoneInfo(self.timezone))

    def data_age_h(self, now: dt.datetime) -> float | None:
        """Hours since the end of the latest published date (the data's age)."""
        start = self.date_start()
        return None if start is None else (now - (start + dt.timedelta(days=1))).total_seconds() / 3600

    def published_at(self) -> dt.datetime | None:
        try:
            return dt.datetime.fromisoformat(self.manifest.published_at) if self.manifest else None
        except ValueError:
            return None

    def run_duration(self) -> float | None:
        """Wall time of the run that published the latest date."""
        if not self.manifest:
            return None
        run = next((r for r in reversed(self.runs) if r.run_id == self.manifest.run_id), None)
        return run.duration_s if run else (self.manifest.duration_s or None)

    def next_run(self) -> dt.datetime | None:
        return next_runs(self.schedule, 1)[0] if self.schedule else None


def job_state(spec: JobSpec, root: Path) -> JobState:
    out = job_dir(spec, root)
    state = JobState(spec.name, spec.source, str(out.root), spec.job.schedule, spec.job.timezone)
    _, problem = read_latest(out)
    if problem:
        state.problems.append(problem)
    state.latest = latest(out)
    for date in manifest_dates(out):
        bad = manifest_problem(out, date)
        if bad:
            state.problems.append(bad)
            continue
        for table in read_manifest(out, date).tables:
            bad = marker_problem(out, table, date)
            if bad:
                state.problems.append(bad)
    state.manifest = read_manifest(out, state.latest) if state.latest else None
    if state.manifest and state.manifest.rebuilt:
        state.problems.append(f"the manifest of {state.latest} was rebuilt from its tables' markers "
                              f"({state.manifest.rebuilt})")
    state.runs, problem = history.read_runs(out)
    if problem:
        state.problems.append(problem)
    return state


def states(root: Path, job: str | None, load: Callable[[str], JobSpec], scheduled_only: bool = False) -> list[JobState]:
    """The state of `job`, or of every spec in jobs/ (a spec that does not load: its error).
    `scheduled_only` (the check): only specs with a [job] schedule, and a named spec that does
    not load is a state of its own rather than an error."""
    if job:
        try:
            return [job_state(load(job), root)]
        except RecallError as exc:
            if not scheduled_only:
                raise
            return [JobState(job, job, spec_error=exc.line())]
    folder = root / "jobs"
    if not folder.is_dir():
        raise NoProject(root)
    out = []
    for name in sorted(p.stem for p in folder.glob("*.toml")):
        try:
            spec = load(name)
        except RecallError as exc:
            out.append(JobState(name, str(folder / f"{name}.toml"), spec_error=exc.line()))
            continue
        if spec.job.schedule or not scheduled_only:
            out.append(job_state(spec, root))
    return out


class NoProject(RecallError):
    exit_code = 2

    def __init__(self, root: Path) -> None:
        super().__init__(f"no jobs/ folder in {root}: it is not a recall project folder",
                         hint="run recall from the project folder, or name it with --root DIR or the environment "
                              "variable RECALL_ROOT=DIR")


# --- the table -------------------------------------------------------------------------------


def ago(seconds: float) -> str:
    """How long ago, in the unit a person reads at a glance."""
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f}d"


def row(state: JobState, now: dt.datetime) -> dict[str, str]:
    if state.spec_error:
        return {"job": state.job, "last failure": "spec does not load (below)"}
    m = state.manifest
    published = state.published_at()
    failure = state.last_failure
    duration = state.run_duration()
    return {
        "job": state.job,
        "latest": state.latest or "-",
        "age": ago((now - published).total_seconds()) if published else "-",
        "u2i": f"{m.rows['u2i']:,}" if m and "u2i" in m.rows else "-",
        "i2i": f"{m.rows['i2i']:,}" if m and "i2i" in m.rows else "-",
        "recall": f"{m.metrics.merged.recall:.4f}" if m and m.metrics else "-",
        "backtest": f"{m.backtest['recall']:.4f}" if m and "recall" in (m.backtest or {}) else "-",
        "blend": ",".join(f"{n}:{w:g}" for n, w in m.blend.get("weights", {}).items()) if m and m.blend else "-",
        "duration": f"{duration:.1f}s" if duration is not None else "-",
        "next run": state.next_run().strftime("%Y-%m-%d %H:%M") if state.schedule else "-",
        "last failure": (f"{failure.date} exit {failure.exit_code} (run {failure.started[:16] or '?'})"
                         if failure else "-"),
    }


def details(state: JobState) -> list[str]:
    """Lines under the table: whole, never cut (the last failure, days without data, problems)."""
    lines = []
    if state.spec_error:
        lines.append(f"{state.job}: spec does not load: {state.spec_error}")
    failure = state.last_failure
    if failure:
        lines.append(f"{state.job}: last failure {failure.date} exit {failure.exit_code} (run {failure.run_id}, "
                     f"started {failure.started or '?'}): {failure.error or '(no message)'}")
    if state.days_without_data:
        lines.append(f"{state.job}: no data for {', '.join(state.days_without_data)} in the window of {state.latest}")
    lines += [f"{state.job}: {problem}" for problem in state.problems]
    return lines


COLUMNS = ["job", "latest", "age", "u2i", "i2i", "recall", "backtest", "blend", "duration", "next run",
           "last failure"]


def table(found: list[JobState], now: dt.datetime) -> str:
    rows = [row(s, now) for s in found]
    widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r.get(c, "-").ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    more = [line for s in found for line in details(s)]
    return "\n".join(lines + ([""] + more if more else []))


# --- JSON ------------------------------------------------------------------------------------


def run_dict(record: RunRecord | None) -> dict | None:
    if record is None:
        return None
    return {"date": record.date, "run_id": record.run_id, "status": record.status, "exit_code": record.exit_code,
            "started": record.started or None, "duration_s": record.duration_s, "forced": record.forced,
            "error": record.error or None, "rows": record.rows}


def as_dict(state: JobState, now: dt.datetime, max_age_h: float) -> dict:
    m = state.manifest
    published = state.published_at()
    age = state.data_age_h(now)
    code, reasons = verdict(state, now, max_age_h)
    return {
        "job": state.job,
        "spec": state.spec,
        "output": state.output or None,
        "spec_error": state.spec_error,
        "schedule": state.schedule or None,
        "next_run": state.next_run().isoformat(timespec="minutes") if state.schedule and not state.spec_error else None,
        "latest": state.latest,
        "run_id": m.run_id if m else None,
        "published_at": m.published_at if m and m.published_at else None,
        "published_ago_s": round((now - published).total_seconds(), 1) if published else None,
        "data_age_h": round(age, 3) if age is not None else None,
        "rows": m.rows if m else {},
        "holdout": ({"k": m.metrics.k, "recall": m.metrics.merged.recall, "ndcg": m.metrics.merged.ndcg,
                     "hit_rate": m.metrics.merged.hit_rate, "coverage": m.metrics.merged.coverage,
                     "popular_baseline_recall": m.metrics.popular_baseline.recall,
                     "users_reporting": m.metrics.users_reporting,
                     "choosing_recall": m.metrics.choosing.recall if m.metrics.choosing else None}
                    if m and m.metrics else None),
        "backtest_recall": (m.backtest or {}).get("recall") if m else None,
        "blend": ({"weights": m.blend.get("weights", {}), "mode": m.blend.get("mode"), "chosen": m.blend_source}
                  if m and m.blend else None),
        "duration_s": state.run_duration(),
        "days_without_data": state.days_without_data,
        "last_run": run_dict(state.last_run),
        "last_success": run_dict(state.last_success),
        "last_failure": run_dict(state.last_failure),
        "problems": state.problems,
        "check": {"status": CHECK_NAMES[code], "max_age_h": max_age_h, "reasons": reasons},
    }


# --- the check -------------------------------------------------------------------------------


def verdict(state: JobState, now: dt.datetime, max_age_h: float) -> tuple[int, list[str]]:
    """(Nagios code, reasons) for one job: CRITICAL when its spec does not load, nothing is
    published, its latest date is older than `max_age_h`, or its last run failed; WARNING for
    days without data in the latest window and state files that hold garbage."""
    if state.spec_error:
        return CRITICAL, [f"spec does not load: {state.spec_error}"]
    critical, warning = [], []
    age = state.data_age_h(now)
    if age is None:
        critical.append("nothing published")
    elif age > max_age_h:
        critical.append(f"latest {state.latest} is {age:.1f}h old (max {max_age_h:g}h)")
    last = state.last_run
    if last is not None and last.exit_code != 0:
        critical.append(f"last run failed ({last.date}, exit {last.exit_code}: {last.error or 'no message'})")
    if state.days_without_data:
        warning.append(f"no data for {', '.join(state.days_without_data)} in the window of {state.latest}")
    warning += state.problems
    if critical:
        return CRITICAL, critical + warning
    return (WARNING, warning) if warning else (OK, [])


def check_line(found: list[JobState], now: dt.datetime, max_age_h: float) -> tuple[int, str]:
    """One line, Nagios plugin style: `RECALL <STATUS>: <what> | <perfdata>`, and its exit code."""
    if not found:
        return UNKNOWN, "RECALL UNKNOWN: no scheduled job to check (name one: recall status JOB --check)"
    judged = [(s, *verdict(s, now, max_age_h)) for s in found]
    code = max(c for _, c, _ in judged)
    bad = [f"{s.job}: {'; '.join(reasons)}" for s, c, reasons in judged if c != OK]
    if code == OK:
        text = f"{len(found)} job(s) fresh: " + ", ".join(
            f"{s.job} {s.latest} ({s.data_age_h(now):.1f}h old)" for s in found)
    else:
        text = " / ".join(bad)
    perf = " ".join(f"'{s.job} age'={s.data_age_h(now) * 3600:.0f}s;;{max_age_h * 3600:.0f}"
                    for s in found if s.data_age_h(now) is not None)
    line = f"RECALL {CHECK_NAMES[code]}: {' '.join(text.split())}" + (f" | {perf}" if perf else "")
    return code, line


# --- the verb --------------------------------------------------------------------------------


def command(root: Path, job: str | None, load: Callable[[str], JobSpec], as_json: bool = False,
            check: bool = False, max_age_h: float | None = None) -> int:
    """`recall status [JOB] [--json] [--check [--max-age HOURS]]`."""
    max_age = DEFAULT_MAX_AGE_H if max_age_h is None else max_age_h
    now = dt.datetime.now(dt.timezone.utc)
    found = states(root, job, load, scheduled_only=check)
    code = OK
    if check:
        code, line = check_line(found, now, max_age)
    if as_json:
        print(json.dumps({"generated_at": now.isoformat(timespec="seconds"), "root": str(root),
                          "jobs": [as_dict(s, now, max_age) for s in found]}, indent=1))
    elif check:
        print(line)
    elif not found:
        print(f"no job specs in {root / 'jobs'}")
    else:
        print(table(found, now))
    return code
