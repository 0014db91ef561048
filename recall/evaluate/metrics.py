"""Ranking metrics of fixed-width lists against relevant (user, item) pairs."""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from recall.arrays import distinct
from recall.kernel.keys import in_keys
from recall.store.records import Scores


@dataclass(frozen=True)
class Relevant:
    """What users went on to do: (user, item) index pairs; item -1 for an item the model cannot
    know (new since), which counts as relevant and is never a hit."""

    user: np.ndarray  # int64
    item: np.ndarray  # int64


def sample_users(relevant: Relevant, max_users: int, seed: int) -> np.ndarray:
    """The users to score (sorted): all of them, or a seeded sample of max_users."""
    users = distinct(relevant.user)
    if users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def ranking_metrics(lists: np.ndarray, users: np.ndarray, relevant: Relevant, n_items: int, k: int) -> Scores:
    """recall@k = hits / min(k, relevant); NDCG@k; hit rate@k; catalogue coverage."""
    per_user = user_metrics(lists, users, relevant, n_items, k)
    valid = per_user["relevant"] > 0
    recommended = distinct(lists[:, :k][lists[:, :k] >= 0])
    return Scores(recall=round(float(np.mean(per_user["recall"][valid])), 6),
                  ndcg=round(float(np.mean(per_user["ndcg"][valid])), 6),
                  hit_rate=round(float(np.mean(per_user["hits"][valid] > 0)), 6),
                  coverage=round(recommended.size / n_items, 6), users=int(valid.sum()))


def user_metrics(lists: np.ndarray, users: np.ndarray, relevant: Relevant, n_items: int, k: int) -> dict:
    """Per user of `users` (rows of `lists`): relevant count, hits, recall@k and NDCG@k."""
    lists = lists[:, :k]
    rows, keys, count = relevant_rows(users, relevant, n_items)
    hit = in_keys(keys, np.arange(users.size)[:, None], lists, n_items)
    hits = hit.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit * discount[: lists.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discount)[np.maximum(np.minimum(count, k), 1) - 1]
    return {"relevant": count, "hits": hits, "recall": hits / np.maximum(np.minimum(count, k), 1),
            "ndcg": dcg / ideal}


def relevant_rows(users: np.ndarray, relevant: Relevant, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out pairs of `users` (sorted) as (row of each pair, sorted keys row * n_items + item
    of the known items, relevant count per row)."""
    order = np.argsort(relevant.user, kind="stable")
    tu, ti = relevant.user[order], relevant.item[order]
    row_of = np.searchsorted(users, tu)
    inside = (row_of < users.size) & (users[np.minimum(row_of, users.size - 1)] == tu)
    rel_rows, rel_items = row_of[inside], ti[inside]
    count = np.bincount(rel_rows, minlength=users.size)
    known = rel_items >= 0
    keys = np.sort(rel_rows[known].astype(np.int64) * n_items + rel_items[known])
    return rel_rows, keys, count
