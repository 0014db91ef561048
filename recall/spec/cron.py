"""Cron expressions: which ones cron would run, and when it runs them next."""
from __future__ import annotations

import datetime as dt

from crontab import CronSlices
from croniter import CroniterError, croniter

from recall.errors import SpecError


def check_expression(expr: str, where: str) -> None:
    """Refuse what cron would not run, or would never run; '%' because cron makes it a newline."""
    text = " ".join(expr.split())
    ok = "%" not in expr and "\n" not in expr and CronSlices.is_valid(text) and croniter.is_valid(text)
    if ok:
        try:
            next_runs(text, 1)
        except (CroniterError, ValueError):
            ok = False
    if not ok:
        raise SpecError(f"{where}: bad cron expression {expr!r} (five fields, minute hour day month weekday, "
                        "or @hourly, @daily, @weekly, @monthly, @yearly; never '%' or @reboot)")


def next_runs(expr: str, count: int = 3, start: dt.datetime | None = None) -> list[dt.datetime]:
    """The next `count` times cron would start `expr` (machine-local time, as cron reads it)."""
    it = croniter(expr, start or dt.datetime.now())
    return [it.get_next(dt.datetime) for _ in range(count)]
