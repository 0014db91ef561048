"""A fast power-law interaction log for the benchmark sizes, written as Hive `dt=` partitions.

Every user and every item appears at least once, so the matrix has exactly the size asked for;
the remaining rows follow heavy-tailed user activity and Zipf item popularity, mostly inside a
user's taste cluster (so ALS has structure to learn). Deterministic by seed.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS = ("view", "click", "purchase")
EVENT_P = np.array([0.85, 0.12, 0.03])
EVENT_WEIGHTS = {"view": 1.0, "click": 3.0, "purchase": 10.0}
US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True)
class LogSize:
    users: int
    items: int
    rows: int
    days: int = 14
    clusters: int = 50
    taste: float = 0.7  # share of rows drawn inside the user's taste cluster
    seed: int = 5


SIZES = {
    "small": LogSize(users=3_000, items=800, rows=60_000, days=7, clusters=10),
    "reference": LogSize(users=200_000, items=50_000, rows=5_000_000),
    "large": LogSize(users=2_000_000, items=200_000, rows=50_000_000, clusters=200),
}


class PowerLaw:
    """Who is active and what is popular; sampling by inverse CDF (one searchsorted per draw)."""

    def __init__(self, size: LogSize) -> None:
        rng = np.random.default_rng(size.seed)
        self.size = size
        self.user_ids = (1_000_000_000 + rng.permutation(size.users).astype(np.int64) * 13)
        self.item_ids = (7_000_000 + np.arange(size.items, dtype=np.int64) * 3)
        activity = rng.pareto(1.1, size.users) + 0.1
        self.user_cdf = np.cumsum(activity / activity.sum())
        # items grouped by cluster: cluster c holds the contiguous range of `order` [lo[c], hi[c])
        popularity = 1.0 / np.arange(1, size.items + 1) ** 0.95
        rng.shuffle(popularity)
        cluster = rng.integers(0, size.clusters, size.items)
        self.order = np.argsort(cluster, kind="stable")
        pop = popularity[self.order]
        self.item_cdf = np.cumsum(pop / pop.sum())
        edges = np.searchsorted(cluster[self.order], np.arange(size.clusters + 1))
        self.lo = np.r_[0.0, self.item_cdf][edges[:-1]]
        self.hi = np.r_[0.0, self.item_cdf][edges[1:]]
        self.taste = rng.integers(0, size.clusters, size.users)

    def users(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.user_cdf, rng.random(n)), self.size.users - 1)

    def items_for(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """Mostly from the user's cluster by popularity, else from the whole catalogue."""
        u = rng.random(users.size)
        inside = rng.random(users.size) < self.size.taste
        c = self.taste[users]
        u = np.where(inside, self.lo[c] + u * (self.hi[c] - self.lo[c]), u)
        pos = np.minimum(np.searchsorted(self.item_cdf, u), self.size.items - 1)
        return self.order[pos]


def day_table(world: PowerLaw, day: int, date: dt.date, rows: int, cover: tuple[np.ndarray, np.ndarray]) -> pa.Table:
    """One day's rows; `cover` (users, items) are rows that must appear (coverage of ids)."""
    rng = np.random.default_rng([world.size.seed, day])
    users = world.users(rng, rows)
    items = world.items_for(rng, users)
    users = np.concatenate([cover[0], users])
    items = np.concatenate([cover[1], items])
    n = users.size
    start = int(dt.datetime.combine(date, dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    ts = start + np.sort(rng.integers(0, US_PER_DAY, n))
    events = np.searchsorted(np.cumsum(EVENT_P), rng.random(n))
    return pa.table({
        "user_id": pa.array(world.user_ids[users]),
        "item_id": pa.array(world.item_ids[items]),
        "event": pa.DictionaryArray.from_arrays(pa.array(events.astype(np.int32)), pa.array(EVENTS)).cast(pa.string()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
    })


def generate(out: Path, end: dt.date, size: LogSize) -> list[Path]:
    """Write `size.days` days ending at `end` under `out`; a finished log is marked by _GENERATED."""
    marker = out / "_GENERATED"
    params = {**asdict(size), "end": end.isoformat()}
    if marker.exists() and json.loads(marker.read_text()) == params:
        return sorted(out.glob("dt=*/*.parquet"))
    world = PowerLaw(size)
    rng = np.random.default_rng([size.seed, 0])
    # coverage rows: each user once with an item of their taste, each item once with a random user
    cover_users = np.concatenate([np.arange(size.users), world.users(rng, size.items)])
    cover_items = np.concatenate([world.items_for(rng, np.arange(size.users)), np.arange(size.items)])
    cover_day = rng.integers(0, size.days, cover_users.size)
    per_day = max(0, size.rows - cover_users.size) // size.days
    written = []
    for d in range(size.days):
        date = end - dt.timedelta(days=size.days - 1 - d)
        mine = cover_day == d
        table = day_table(world, date.toordinal(), date, per_day, (cover_users[mine], cover_items[mine]))
        folder = out / f"dt={date.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-00000.parquet", compression="zstd")
        written.append(folder / "part-00000.parquet")
    marker.write_text(json.dumps(params))
    return written
