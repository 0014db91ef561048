"""Loaders for the public logs in ../shared/datasets, written as Parquet the jobs in jobs/ read.

Each loader keeps the data set's quirks right: MovieTweetings item ids are IMDb ids with leading
zeros (kept as text); Last.fm has play counts and no timestamps; MovieLens has CRLF line ends.
The data stay where they are (licences differ); `prepare` writes a converted copy under data/.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recall.errors import InputError

FOLDERS = {"movielens": "movielens-latest-small", "movietweetings": "movietweetings-100k",
           "lastfm": "hetrec2011-lastfm-2k"}


def locate(explicit: str | Path | None = None) -> Path:
    """The shared datasets folder: --source, $RECALL_DATASETS, or ../shared/datasets near the code."""
    here = Path(__file__).resolve().parent.parent.parent  # the project folder of a checkout
    candidates = [explicit, os.environ.get("RECALL_DATASETS"), here.parent / "shared" / "datasets"]
    for candidate in candidates:
        if candidate and (Path(candidate) / FOLDERS["movielens"]).is_dir():
            return Path(candidate)
    raise InputError("public datasets not found (looked at --source, $RECALL_DATASETS, ../shared/datasets)")


def movielens(folder: Path) -> pa.Table:
    """ratings.csv: userId, movieId, rating (0.5-5), timestamp (Unix s, UTC)."""
    t = pacsv.read_csv(folder / "ratings.csv")
    return pa.table({
        "user_id": t["userId"].cast(pa.int64()), "item_id": t["movieId"].cast(pa.int64()),
        "weight": t["rating"].cast(pa.float64()),
        "ts": pc.multiply(t["timestamp"].cast(pa.int64()), 1_000_000).cast(pa.timestamp("us", tz="UTC")),
    })


def movietweetings(folder: Path) -> pa.Table:
    """ratings.dat: user_id::movie_id::rating (0-10)::timestamp, no header; movie ids keep zeros."""
    lines = (folder / "ratings.dat").read_text(encoding="ascii").splitlines()
    parts = [line.split("::") for line in lines if line]
    bad = next((i for i, p in enumerate(parts) if len(p) != 4), None)
    if bad is not None:
        raise InputError(f"{folder / 'ratings.dat'} line {bad + 1}: expected 4 fields separated by '::'")
    users, items, ratings, times = zip(*parts)
    return pa.table({
        "user_id": pa.array([int(u) for u in users], pa.int64()),
        "item_id": pa.array(items, pa.string()),
        "weight": pa.array([float(r) for r in ratings], pa.float64()),
        "ts": pa.array([int(s) * 1_000_000 for s in times], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })


def lastfm(folder: Path) -> pa.Table:
    """user_artists.dat: userID, artistID, weight (play count); tab-separated; no timestamps."""
    t = pacsv.read_csv(folder / "user_artists.dat", parse_options=pacsv.ParseOptions(delimiter="\t"))
    return pa.table({"user_id": t["userID"].cast(pa.int64()), "item_id": t["artistID"].cast(pa.int64()),
                     "weight": t["weight"].cast(pa.float64())})


LOADERS: dict[str, Callable[[Path], pa.Table]] = {
    "movielens": movielens, "movietweetings": movietweetings, "lastfm": lastfm}


def prepare(name: str, source: Path, out: Path) -> Path:
    """Convert data set `name` to out/<name>/ratings.parquet; returns the file written."""
    table = LOADERS[name](source / FOLDERS[name])
    target = out / name / "ratings.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".ratings.parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(target)
    return target


def last_date(table: pa.Table) -> str | None:
    """The UTC date of the newest interaction, the natural run date for a frozen data set."""
    if "ts" not in table.column_names:
        return None
    return pc.max(table["ts"]).as_py().date().isoformat()
