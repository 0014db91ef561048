"""The backtest: the u2i table served after an earlier date, scored against what its users did
since (items they had not touched before it). The truest measure of what downstream got.

An engine finds the returning users and their fresh items (`Returning`, as ids, sampled); the
scoring is shared: `score_served` reads only those users' served rows, so memory stays bounded
by `max_users`, not by the size of the served table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recall.arrays import contains, distinct
from recall.evaluate.metrics import Relevant, ranking_metrics, sample_users
from recall.model.matrix import IdMap, Interactions


@dataclass(frozen=True)
class Returning:
    """Fresh (user, item) pairs since a date, as ids, for a seeded sample of the returning users."""

    user: pa.Array
    item: pa.Array
    returning_users: int  # before sampling
    sampled_users: int


def returning_pairs(inter: Interactions, since_us: int, max_users: int, seed: int) -> Returning | str:
    """The local engine's returning users (or why there are none to score)."""
    if inter.ts is None:
        return "the log has no time column"
    after = inter.ts >= since_us
    if not after.any():
        return "no interactions after that date in this window"
    n_items = len(inter.items)
    before_keys = distinct(inter.user_idx[~after].astype(np.int64) * n_items + inter.item_idx[~after])
    keys = distinct(inter.user_idx[after].astype(np.int64) * n_items + inter.item_idx[after])
    fresh = keys[~contains(before_keys, keys)]
    if fresh.size == 0:
        return "returning users touched no new item"
    relevant = Relevant(fresh // n_items, fresh % n_items)
    sampled = sample_users(relevant, max_users, seed)
    mine = contains(sampled, relevant.user)
    return Returning(inter.users.values.take(pa.array(relevant.user[mine])),
                     inter.items.values.take(pa.array(relevant.item[mine])),
                     int(distinct(relevant.user).size), int(sampled.size))


def score_served(returning: Returning, read_served: Callable[[pa.Array], pa.Table], prev_date: str, k: int,
                 n_items: int) -> dict:
    """Recall@k and friends of the rows served on `prev_date` to the sampled returning users.
    `read_served(user_ids)` returns those users' served rows (user_id, item_id, rank)."""
    users = IdMap.of(returning.user)
    served = read_served(users.values)
    served_users = users.index_of(served.column("user_id").combine_chunks())
    eval_users = distinct(served_users[served_users >= 0])
    if eval_users.size == 0:
        return {"date": prev_date, "skipped": "no served user came back"}
    items = IdMap.of(pa.concat_arrays([returning.item, served.column("item_id").combine_chunks()]))
    fresh_user = users.index_of(returning.user)
    covered = contains(eval_users, fresh_user)
    relevant = Relevant(fresh_user[covered], items.index_of(returning.item)[covered])
    lists = served_lists(served_users, items.index_of(served.column("item_id").combine_chunks()),
                         served.column("rank").to_numpy(), eval_users, k)
    scores = ranking_metrics(lists, eval_users, relevant, max(n_items, len(items)), k)
    return {"date": prev_date, "k": k, "recall": scores.recall, "ndcg": scores.ndcg, "hit_rate": scores.hit_rate,
            "coverage": scores.coverage, "users": scores.users, "returning_users": returning.returning_users,
            "sampled_users": returning.sampled_users, "sampled_users_served": int(eval_users.size)}


def served_lists(users: np.ndarray, items: np.ndarray, rank: np.ndarray, wanted: np.ndarray, k: int) -> np.ndarray:
    """B x k item matrix (by rank) of the served rows of `wanted` users; -1 pads."""
    keep = contains(wanted, users) & (rank <= k)
    u, i, r = users[keep], items[keep], rank[keep] - 1
    out = np.full((wanted.size, k), -1, np.int64)
    out[np.searchsorted(wanted, u), r] = i
    return out
