"""`[monitor]`: what a run tells the systems that watch it.

- `textfile`: after every run that held the job's lock, a Prometheus node-exporter textfile for
  the job, rewritten atomically (node-exporter's textfile collector reads `*.prom`; the temporary
  is a hidden file beside it). Its numbers come from the job folder, like `recall status`.
- `on_failure` / `on_success`: a shell command run after the run, the job's lock released, with
  what happened in its environment (RECALL_JOB, RECALL_DATE, RECALL_EXIT_CODE, RECALL_STATUS,
  RECALL_ERROR, ...), killed past `[monitor] timeout`. Neither can change the run's exit code or
  what it published: the outcome is settled and recorded before they start, and their own
  failures are warnings.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger

from recall.errors import Interrupted
from recall.ops.status import JobState, job_state
from recall.spec.sections import JobSpec
from recall.store.atomic import write_atomic
from recall.store.layout import JobDir
from recall.store.records import RunRecord

STATUSES = ("published", "skipped", "failed")
KILL_GRACE_S = 5.0  # after SIGTERM, how long a timed-out command's processes have before SIGKILL

METRICS = {  # name: (type, help)
    "recall_last_run_timestamp_seconds": ("gauge", "When the job's last run ended (Unix time)."),
    "recall_last_run_exit_code": ("gauge", "Exit code of the job's last run (0 published or skipped)."),
    "recall_last_run_status": ("gauge", "The job's last run: 1 for its status (published, skipped, failed)."),
    "recall_last_run_duration_seconds": ("gauge", "Wall time of the job's last run."),
    "recall_last_success_timestamp_seconds": ("gauge", "When the job's last run with exit code 0 ended (Unix time)."),
    "recall_latest_date_timestamp_seconds": ("gauge", "Start of the newest published date, in the job's time zone "
                                             "(Unix time): time() minus this is the data's age plus one day."),
    "recall_latest_published_timestamp_seconds": ("gauge", "When the newest published date was published (Unix time)."),
    "recall_table_rows": ("gauge", "Rows of each table of the newest published date."),
    "recall_holdout_recall": ("gauge", "Holdout recall@k of the merged u2i list of the newest published date."),
    "recall_backtest_recall": ("gauge", "Backtest recall@k of the u2i table served before the newest published "
                               "date, against what its users did since."),
    "recall_days_without_data": ("gauge", "Days of the newest published date's window without input data."),
}


def textfile_path(spec: JobSpec, root: Path) -> Path | None:
    return root / spec.monitor.textfile if spec.monitor.textfile else None  # an absolute path replaces root


def render(state: JobState) -> str:
    """The textfile: every metric known for the job, each with its HELP and TYPE."""
    job = state.job
    samples: dict[str, list[tuple[dict, float]]] = {name: [] for name in METRICS}

    def add(name: str, value: float | None, **labels: str) -> None:
        if value is not None:
            samples[name].append(({"job": job, **labels}, float(value)))

    last = state.last_run
    if last is not None:
        add("recall_last_run_timestamp_seconds", ended(last))
        add("recall_last_run_exit_code", last.exit_code)
        for status in STATUSES:
            add("recall_last_run_status", 1 if last.status == status else 0, status=status)
        add("recall_last_run_duration_seconds", last.duration_s)
    success = state.last_success
    if success is not None:
        add("recall_last_success_timestamp_seconds", ended(success))
    start = state.date_start()
    if start is not None:
        add("recall_latest_date_timestamp_seconds", start.timestamp())
    published = state.published_at()
    if published is not None:
        add("recall_latest_published_timestamp_seconds", published.timestamp())
    m = state.manifest
    if m is not None:
        for table, rows in m.rows.items():
            add("recall_table_rows", rows, table=table)
        if m.metrics is not None:
            add("recall_holdout_recall", m.metrics.merged.recall, k=str(m.metrics.k))
        if m.backtest and "recall" in m.backtest:
            add("recall_backtest_recall", m.backtest["recall"], k=str(m.backtest.get("k", "")))
        add("recall_days_without_data", len(state.days_without_data))
    lines = []
    for name, (kind, text) in METRICS.items():
        if samples[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{{{labels(ls)}}} {number(v)}" for ls, v in samples[name]]
    return "\n".join(lines) + "\n"


def labels(values: dict[str, str]) -> str:
    escaped = {k: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in values.items()}
    return ",".join(f'{k}="{v}"' for k, v in escaped.items())


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def ended(record: RunRecord) -> float | None:
    try:
        return dt.datetime.fromisoformat(record.started).timestamp() + record.duration_s
    except (TypeError, ValueError):
        return None


def write_textfile(spec: JobSpec, root: Path, job: JobDir) -> None:
    """Rewrite the job's textfile, if it has one; a failure is a warning, never the run's outcome."""
    path = textfile_path(spec, root)
    if path is None:
        return
    try:
        write_atomic(path, render(job_state(spec, root)))
    except OSError as exc:
        logger.warning(f"[monitor] textfile: cannot write {path}: {exc.strerror}; the run's outcome stands")
    except Exception as exc:  # a bug, or a state file too odd to render: never the run's outcome
        logger.opt(exception=exc).bind(console=False).error("[monitor] textfile: internal error")
        logger.warning(f"[monitor] textfile: not written ({type(exc).__name__}: {exc}); the run's outcome stands")


# --- on_failure / on_success -----------------------------------------------------------------


def command_for(spec: JobSpec, record: RunRecord) -> tuple[str, str]:
    """(key, command) to run after `record`: on_failure for a non-zero exit, on_success for a run
    that published; ("", "") otherwise (a skipped date runs neither)."""
    if record.exit_code != 0:
        return "on_failure", spec.monitor.on_failure
    if record.status == "published":
        return "on_success", spec.monitor.on_success
    return "", ""


def environment(spec: JobSpec, root: Path, job: JobDir, record: RunRecord) -> dict[str, str]:
    return {
        **os.environ,
        "RECALL_JOB": spec.name,
        "RECALL_DATE": record.date,
        "RECALL_EXIT_CODE": str(record.exit_code),
        "RECALL_STATUS": record.status,
        "RECALL_ERROR": " ".join(record.error.split()),
        "RECALL_RUN_ID": record.run_id,
        "RECALL_DURATION_S": f"{record.duration_s:.3f}",
        "RECALL_OUTPUT": str(job.root),
        "RECALL_SPEC": spec.source,
        "RECALL_LOG": str(root / spec.log.dir / f"{spec.name}.log"),
        "RECALL_ROOT": str(root),
    }


def run_command(spec: JobSpec, root: Path, job: JobDir, record: RunRecord) -> None:
    """Run the spec's on_failure / on_success for `record` with `/bin/sh -c`, from the project
    folder, its output on our stderr, in a session of its own (a Ctrl-C at the terminal is not
    sent to it), killed with its children past `[monitor] timeout`. Never raises but to stop
    on a signal: whatever the command does is a warning at most."""
    try:
        run(spec, root, job, record)
    except Exception as exc:  # a bug here must not become the run's outcome either
        logger.opt(exception=exc).bind(console=False).error("[monitor] command: internal error")
        logger.warning(f"[monitor] command not run ({type(exc).__name__}: {exc}); the run's outcome stands")


def run(spec: JobSpec, root: Path, job: JobDir, record: RunRecord) -> None:
    key, command = command_for(spec, record)
    if not command:
        return
    say = logger.bind(job=spec.name, date=record.date, run_id=record.run_id)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=root, env=environment(spec, root, job, record),
                                stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),
                                start_new_session=True)
    except OSError as exc:
        say.warning(f"[monitor] {key} could not start: {exc.strerror}; the run's outcome stands")
        return
    try:
        code = proc.wait(timeout=spec.monitor.timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        say.warning(f"[monitor] {key} was killed after [monitor] timeout = {spec.monitor.timeout:g}s; "
                    "the run's outcome stands")
        return
    except Interrupted:
        stop(proc)
        raise
    took = time.monotonic() - started
    if code != 0:
        say.warning(f"[monitor] {key} exited {code} after {took:.1f}s: {command!r}; the run's outcome stands")
    else:
        say.debug(f"[monitor] {key} done in {took:.1f}s")


def stop(proc: subprocess.Popen) -> None:
    """End the command's whole process group: SIGTERM, a grace, then SIGKILL for what is left."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break  # nothing left of the group
        if signum == signal.SIGTERM:
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()
