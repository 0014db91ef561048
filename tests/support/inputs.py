"""Interaction logs written in the shapes people hand us: partitions, CSV, altered days."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tests.support.project import DATE


def window_frame(log: Path, date: str = DATE, days: int = 10) -> pd.DataFrame:
    """The rows of the window ending at `date` of a Hive-partitioned log, with its `dt` column."""
    end = dt.date.fromisoformat(date)
    wanted = [(end - dt.timedelta(days=i)).isoformat() for i in range(days)]
    data = ds.dataset(log, format="parquet", partitioning="hive").to_table()
    frame = data.to_pandas()
    frame["dt"] = frame["dt"].astype(str)
    return frame[frame["dt"].isin(wanted)].reset_index(drop=True)


def write_partitioned(frame: pd.DataFrame, folder: Path, schema: pa.Schema | None = None,
                      per_day: Callable[[str, pa.Table], pa.Table] | None = None) -> Path:
    """`frame` (with a `dt` column) as folder/dt=D/part-00000.parquet; `per_day` may alter a day."""
    for day, rows in frame.groupby("dt", sort=True):
        data = pa.Table.from_pandas(rows.drop(columns="dt"), schema=schema, preserve_index=False)
        if per_day is not None:
            data = per_day(day, data)
        part = folder / f"dt={day}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, part / "part-00000.parquet")
    return folder


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """`frame` as CSV, times as ISO text."""
    out = frame.drop(columns=[c for c in ("dt",) if c in frame.columns]).copy()
    if "ts" in out.columns and pd.api.types.is_datetime64_any_dtype(out["ts"]):
        out["ts"] = out["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path
