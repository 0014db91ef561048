"""The window of a run: the run date and the days before it, in the job's time zone."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Window:
    """The run date and the `days` days before and including it, in the job's time zone."""

    run_date: dt.date
    days: int
    timezone: str = "UTC"

    @property
    def start(self) -> dt.date:
        return self.run_date - dt.timedelta(days=self.days - 1)

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.days)]

    def bounds_us(self) -> tuple[int, int]:
        """[start, end) of the window as UTC microseconds since the epoch."""
        tz = ZoneInfo(self.timezone)
        lo = dt.datetime.combine(self.start, dt.time(), tzinfo=tz)
        hi = dt.datetime.combine(self.run_date + dt.timedelta(days=1), dt.time(), tzinfo=tz)
        return to_us(lo), to_us(hi)


def to_us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)
