"""A realistic synthetic interaction log: power-law users and items, taste clusters, new items
trending in and fading, a view -> click -> purchase funnel. Deterministic by seed."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS = ("view", "click", "purchase")
EVENT_P = (0.85, 0.12, 0.03)
TREND_PERIOD = 60


@dataclass(frozen=True)
class SynthSpec:
    users: int = 20_000
    items: int = 5_000
    rows_per_day: int = 20_000
    days: int = 28
    clusters: int = 40
    taste: float = 0.8  # share of a user's events inside their favourite clusters
    trending: float = 0.15  # share of items that trend: a burst every TREND_PERIOD days, fading
    seed: int = 7


class World:
    """The fixed part of the simulation: who likes what and how popular things are."""

    def __init__(self, spec: SynthSpec) -> None:
        rng = np.random.default_rng(spec.seed)
        self.spec = spec
        self.user_ids = np.sort(rng.choice(np.arange(10_000_000, 10_000_000 + 50 * spec.users), spec.users,
                                           replace=False)).astype(np.int64)
        self.item_ids = (500_000 + np.arange(spec.items) * 7).astype(np.int64)
        self.activity = rng.pareto(1.2, spec.users) + 0.05  # heavy-tailed user activity
        self.item_pop = 1.0 / np.arange(1, spec.items + 1) ** 0.9  # Zipf-like item popularity
        rng.shuffle(self.item_pop)
        self.cluster = rng.integers(0, spec.clusters, spec.items)
        self.favourites = rng.integers(0, spec.clusters, (spec.users, 2))
        self.favourite_p = rng.uniform(0.5, 0.9, spec.users)
        self.trend_phase = np.where(rng.random(spec.items) < spec.trending,
                                    rng.integers(0, TREND_PERIOD, spec.items), -1)

    def day_weights(self, day: int) -> np.ndarray:
        """Item weights on day `day` (a date ordinal, so a date's data never depends on the range
        generated): trending items burst every TREND_PERIOD days and fade over a few days."""
        w = self.item_pop.copy()
        trending = self.trend_phase >= 0
        age = (day - self.trend_phase[trending]) % TREND_PERIOD
        w[trending] *= 1.0 + 30.0 * np.exp(-age / 3.0)
        return w

    def day(self, day: int, start: dt.datetime, rows: int) -> pa.Table:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, day])
        users = rng.choice(spec.users, rows, p=self.activity / self.activity.sum())
        weights = self.day_weights(day)
        in_taste = rng.random(rows) < spec.taste
        pick = np.where(rng.random(rows) < self.favourite_p[users], 0, 1)
        wanted = self.favourites[users, pick]
        items = np.empty(rows, dtype=np.int64)
        for c in range(spec.clusters):
            rows_c = np.flatnonzero(in_taste & (wanted == c))
            members = np.flatnonzero(self.cluster == c)
            if rows_c.size and members.size and weights[members].sum() > 0:
                p = weights[members] / weights[members].sum()
                items[rows_c] = members[rng.choice(members.size, rows_c.size, p=p)]
            elif rows_c.size:
                in_taste[rows_c] = False
        rest = np.flatnonzero(~in_taste)
        items[rest] = rng.choice(spec.items, rest.size, p=weights / weights.sum())
        events = rng.choice(len(EVENTS), rows, p=EVENT_P)
        seconds = np.sort(rng.integers(0, 86_400, rows))
        # the same user, item and event in the same second is an ingestion replay, which the
        # pipeline counts as a bad row: a clean log has none
        _, first = np.unique(np.stack([seconds, users, items, events], axis=1), axis=0, return_index=True)
        keep = np.sort(first)
        users, items, events, seconds = users[keep], items[keep], events[keep], seconds[keep]
        ts = np.datetime64(start.replace(tzinfo=None), "us") + seconds.astype("timedelta64[s]")
        return pa.table({
            "user_id": pa.array(self.user_ids[users]),
            "item_id": pa.array(self.item_ids[items]),
            "event": pa.array(np.array(EVENTS, dtype=object)[events], pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        })


def generate(out: Path, end: dt.date, spec: SynthSpec = SynthSpec()) -> list[Path]:
    """Write `spec.days` days ending at `end` as out/dt=YYYY-MM-DD/part-00000.parquet."""
    world = World(spec)
    written = []
    for i in range(spec.days):
        date = end - dt.timedelta(days=spec.days - 1 - i)
        start = dt.datetime.combine(date, dt.time(), tzinfo=dt.timezone.utc)
        weekly = 1.0 + 0.15 * np.sin(2 * np.pi * date.toordinal() / 7)
        table = world.day(date.toordinal(), start, int(spec.rows_per_day * weekly))
        folder = out / f"dt={date.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".part-00000.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd")
        tmp.rename(folder / "part-00000.parquet")
        written.append(folder / "part-00000.parquet")
    return written
