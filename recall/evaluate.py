"""Holdout split, ranking metrics, and the quality gate."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recall.candidates import Ranking, csr_keys, from_ranking, in_keys
from recall.config import EvaluateSection, GateSection
from recall.errors import GateError
from recall.matrix import US_PER_DAY, IdMap, Interactions, reencode, seen_matrix, to_csr


@dataclass
class Split:
    train: Interactions  # its own id maps: only what the model may know
    test_user: np.ndarray  # train user index of each relevant pair
    test_item: np.ndarray  # train item index, -1 for an item new in the holdout (never a hit)
    description: str


def holdout_split(inter: Interactions, spec: EvaluateSection, end_us: int) -> Split | None:
    """Temporal: the last holdout_days are held out. Without time: each user's last fraction."""
    n = len(inter.user_idx)
    if inter.ts is not None:
        test = inter.ts >= end_us - spec.holdout_days * US_PER_DAY
        description = f"temporal: last {spec.holdout_days} day(s) held out"
    else:
        frame = pd.DataFrame({"u": inter.user_idx})
        pos = frame.groupby("u").cumcount().to_numpy()
        size = frame.groupby("u")["u"].transform("size").to_numpy()
        held = np.floor(size * spec.holdout_fraction).astype(np.int64)
        test = (size >= 2) & (pos >= size - held)
        description = f"per-user: last {spec.holdout_fraction:.0%} of each user's rows (log order) held out"
    if test.all() or not test.any():
        return None
    train = reencode(inter.take(~test))
    if len(train.items) < 2:
        return None
    # relevant pairs: distinct (user, item) in the holdout, for users known in training,
    # for items the user did not already interact with in training
    user_map = IdMap(train.users.values)
    item_map = IdMap(train.items.values)
    tu = user_map.index_of(inter.users.values.take(inter.user_idx[test]))
    ti = item_map.index_of(inter.items.values.take(inter.item_idx[test]))
    known_user = tu >= 0
    pairs = pd.DataFrame({"u": tu[known_user], "i": ti[known_user],
                          "raw": inter.item_idx[test][known_user]}).drop_duplicates(["u", "raw"])
    seen = seen_matrix(to_csr(train))
    keys = csr_keys(seen)
    fresh = ~in_keys(keys, pairs["u"].to_numpy(), pairs["i"].to_numpy(), seen.shape[1])
    pairs = pairs[fresh]
    if pairs.empty:
        return None
    return Split(train, pairs["u"].to_numpy(np.int64), pairs["i"].to_numpy(np.int64), description)


def sample_users(split: Split, max_users: int, seed: int) -> np.ndarray:
    users = np.unique(split.test_user)
    if users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def ranking_metrics(lists: np.ndarray, users: np.ndarray, split: Split, n_items: int, k: int) -> dict:
    """recall@k = hits / min(k, relevant); NDCG@k; hit rate@k; catalogue coverage."""
    lists = lists[:, :k]
    order = np.argsort(split.test_user, kind="stable")
    tu, ti = split.test_user[order], split.test_item[order]
    row_of = np.searchsorted(users, tu)
    inside = (row_of < users.size) & (users[np.minimum(row_of, users.size - 1)] == tu)
    rel_rows, rel_items = row_of[inside], ti[inside]
    relevant = np.bincount(rel_rows, minlength=users.size)
    known = rel_items >= 0
    keys = np.sort(rel_rows[known].astype(np.int64) * n_items + rel_items[known])
    hit = in_keys(keys, np.arange(users.size)[:, None], lists, n_items)
    hits = hit.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit * discount[: lists.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(relevant, k) - 1]
    valid = relevant > 0
    recommended = np.unique(lists[lists >= 0])
    return {
        "recall": round(float(np.mean(hits[valid] / np.minimum(relevant[valid], k))), 6),
        "ndcg": round(float(np.mean(dcg[valid] / ideal[valid])), 6),
        "hit_rate": round(float(np.mean(hits[valid] > 0)), 6),
        "coverage": round(recommended.size / n_items, 6),
        "users": int(valid.sum()),
    }


def popular_lists(popular: Ranking, batch, k: int) -> np.ndarray:
    items, _ = from_ranking(popular, batch, np.full(batch.size, k))
    return items


def gate_checks(spec: GateSection, metrics: dict | None, previous: dict | None, rows: int) -> list[dict]:
    """Every gate check with its value and limit; `passed` False on the failing ones."""
    checks = [{"check": "min_rows", "value": rows, "limit": spec.min_rows, "passed": rows >= spec.min_rows}]
    merged = (metrics or {}).get("merged")
    if merged:
        recall = merged["recall"]
        checks.append({"check": "min_recall", "value": recall, "limit": spec.min_recall,
                       "passed": recall >= spec.min_recall})
        checks.append({"check": "min_coverage", "value": merged["coverage"], "limit": spec.min_coverage,
                       "passed": merged["coverage"] >= spec.min_coverage})
        before = ((previous or {}).get("merged") or {}).get("recall")
        if before and (previous or {}).get("k") == metrics.get("k"):
            floor = before * (1 - spec.max_recall_drop)
            checks.append({"check": "max_recall_drop", "value": recall, "limit": round(floor, 6),
                           "previous": before, "passed": recall >= floor})
    return checks


def enforce_gate(checks: list[dict], skip: bool) -> None:
    failed = [c for c in checks if not c["passed"]]
    if failed and not skip:
        c = failed[0]
        detail = (f"recall {c['value']} fell more than the allowed drop from the previous run's "
                  f"{c['previous']} (floor {c['limit']})" if c["check"] == "max_recall_drop"
                  else f"{c['value']} is below the minimum {c['limit']}")
        raise GateError(f"quality gate refused to publish: {c['check']}: {detail}")
