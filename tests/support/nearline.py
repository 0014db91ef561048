"""Interactions after a published window, as upstream lands them: a day partition after the run date."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recall.samples.synth import World
from tests.support.project import RUN_DATE, SMALL

NEXT_DAY = RUN_DATE + dt.timedelta(days=1)
NEXT = NEXT_DAY.isoformat()


def land(root: Path, rows: list[tuple[int, int, str, str]], day: dt.date = NEXT_DAY) -> Path:
    """(user_id, item_id, event, "HH:MM") rows as a new part file of the day's partition of data/log."""
    folder = root / "data" / "log" / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{len(list(folder.glob('part-*.parquet'))):05d}.parquet"
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    times = [start + dt.timedelta(hours=int(t[:2]), minutes=int(t[3:])) for *_, t in rows]
    table = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                      "item_id": pa.array([r[1] for r in rows], pa.int64()),
                      "event": pa.array([r[2] for r in rows], pa.string()),
                      "ts": pa.array(times, pa.timestamp("us", tz="UTC"))})
    tmp = path.with_name("." + path.name)
    pq.write_table(table, tmp)
    tmp.rename(path)  # a file appears whole, as a landing job puts it
    return path


def land_day(root: Path, rows: int, day: dt.date = NEXT_DAY) -> Path:
    """`rows` synthetic interactions of the small log's world on `day` (its users, its tastes)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    table = World(SMALL).day(day.toordinal(), start, rows)
    folder = root / "data" / "log" / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{len(list(folder.glob('part-*.parquet'))):05d}.parquet"
    pq.write_table(table, path)
    return path
