"""Many dates of one job, in order: catch-up (the nights missed up to yesterday) and backfill."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from recall.errors import LockBusy, RecallError
from recall.run.nightly import RunOptions, run_job
from recall.store.layout import job_dir
from recall.spec.sections import JobSpec
from recall.store.records import Manifest
from recall.store.state import latest, published_dates


class BatchFailed(RecallError):
    """Some dates failed; exits with the worst of their codes."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, hint="see the table above and the job's log")
        self.exit_code = code


def catch_up_dates(last: str | None, published: set[str], through: dt.date,
                   keep_days: int) -> tuple[list[dt.date], list[dt.date]]:
    """(dates to run, oldest first; dates left out because retention would drop them at once).

    The dates after the last published one (`_LATEST`) up to `through`. With nothing published
    yet, only `through`: a new job starts with its first night, older nights are a backfill.
    """
    if not last:
        return [through], []
    start = dt.date.fromisoformat(last) + dt.timedelta(days=1)
    dates = [start + dt.timedelta(days=i) for i in range((through - start).days + 1)]
    dates = [d for d in dates if d.isoformat() not in published]
    oldest_kept = through - dt.timedelta(days=keep_days - 1)
    return [d for d in dates if d >= oldest_kept], [d for d in dates if d < oldest_kept]


def catch_up(spec: JobSpec, root: Path, through: dt.date, force: bool = False, skip_gate: bool = False) -> int:
    """`recall run JOB --catch-up`: every missing date up to `through`, in order."""
    out = job_dir(spec, root)
    dates, dropped = catch_up_dates(latest(out), set(published_dates(out)), through, spec.output.keep_days)
    if dropped:
        print(f"{spec.name}: not catching up {dropped[0]}..{dropped[-1]} ({len(dropped)} date(s)): older than "
              f"[output] keep_days = {spec.output.keep_days}, retention would remove them at once")
    if not dates:
        print(f"{spec.name}: nothing to catch up (published through {latest(out)})")
        return 0
    print(f"{spec.name}: catching up {len(dates)} date(s): {', '.join(d.isoformat() for d in dates)}")
    return run_dates(spec, root, dates, force, skip_gate, keep_going=False)


def run_dates(spec: JobSpec, root: Path, dates: list[dt.date], force: bool, skip_gate: bool, keep_going: bool) -> int:
    """Run each date in order and print a summary table; raise BatchFailed with the worst code.

    Stops at the first failure unless keep_going; always stops when the job's lock is taken
    (every later date would find it taken too).
    """
    rows: list[tuple[str, str, int | str, str]] = []
    for date in dates:
        try:
            result = run_job(spec, RunOptions(date, root, force, skip_gate, progress=sys.stderr.isatty()))
            rows.append((date.isoformat(), result.status, 0, rows_text(result.manifest)))
        except RecallError as exc:
            rows.append((date.isoformat(), "failed", exc.exit_code, " ".join(str(exc).split())))
            if not keep_going or isinstance(exc, LockBusy):
                break
    for date in dates[len(rows):]:
        rows.append((date.isoformat(), "not run", "", "stopped at the first failure (--keep-going runs on)"))
    print(summary(rows))
    code = worst(rows)
    if code:
        failed = [r for r in rows if r[1] == "failed"]
        first = next(r for r in failed if r[2] == code)
        raise BatchFailed(f"{spec.name}: {len(failed)} of {len(dates)} date(s) failed, worst exit {code} "
                          f"on {first[0]}: {first[3]}", code)
    return 0


def rows_text(manifest: Manifest | None) -> str:
    return ", ".join(f"{name} {rows:,}" for name, rows in (manifest.rows if manifest else {}).items())


def worst(rows: list[tuple]) -> int:
    """The highest exit code of the rows (0 when every date went through)."""
    return max((r[2] for r in rows if isinstance(r[2], int)), default=0)


def summary(rows: list[tuple]) -> str:
    width = max(len("status"), *(len(r[1]) for r in rows))
    lines = [f"{'date':<10}  {'status':<{width}}  exit  detail"]
    lines += [f"{d:<10}  {s:<{width}}  {str(c):>4}  {detail[:100]}" for d, s, c, detail in rows]
    return "\n".join(lines)
