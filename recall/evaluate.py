"""Holdout split, ranking metrics, and the quality gate."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from loguru import logger

from recall.arrays import contains, distinct
from recall.candidates import Ranking, csr_keys, from_ranking, in_keys
from recall.config import EvaluateSection, GateSection, JobSpec
from recall.errors import GateError
from recall.matrix import US_PER_DAY, Interactions, reencode, seen_matrix, to_csr
from recall.recaller import Recaller, fit


@dataclass
class Split:
    train: Interactions  # its own id maps: only what the model may know
    test_user: np.ndarray  # train user index of each relevant pair
    test_item: np.ndarray  # train item index, -1 for an item new in the holdout (never a hit)
    description: str
    cutoff_us: int  # "now" for the model trained on the split (decay, recent popularity)


def holdout_split(inter: Interactions, spec: EvaluateSection, end_us: int, seed: int = 0) -> Split | None:
    """Temporal: the last holdout_days are held out. Per user: each user's last fraction."""
    temporal = spec.split == "temporal" or (spec.split == "auto" and inter.ts is not None)
    if temporal and inter.ts is None:
        return None
    cutoff_us = end_us
    if temporal:
        cutoff_us = end_us - spec.holdout_days * US_PER_DAY
        test = inter.ts >= cutoff_us
        description = f"temporal: last {spec.holdout_days} day(s) held out"
    elif spec.split == "user_random":
        shuffled = np.random.default_rng(seed).permutation(len(inter.user_idx))
        test = last_fraction(inter, spec.holdout_fraction, when=shuffled)
        description = f"per user: a random {spec.holdout_fraction:.0%} of each user's interactions held out (seed {seed})"
    else:
        test = last_fraction(inter, spec.holdout_fraction)
        order = "time" if inter.ts is not None else "log order"
        description = f"per user: last {spec.holdout_fraction:.0%} of each user's interactions (by {order}) held out"
    if test.all() or not test.any():
        return None
    train = reencode(inter.take(~test))
    if len(train.items) < 2:
        return None
    # relevant pairs: distinct (user, item) in the holdout, for users known in training,
    # for items the user did not already interact with in training
    tu = train.users.index_of(inter.users.values.take(inter.user_idx[test]))
    ti = train.items.index_of(inter.items.values.take(inter.item_idx[test]))
    known_user = tu >= 0
    pairs = pd.DataFrame({"u": tu[known_user], "i": ti[known_user],
                          "raw": inter.item_idx[test][known_user]}).drop_duplicates(["u", "raw"])
    seen = seen_matrix(to_csr(train))
    keys = csr_keys(seen)
    fresh = ~in_keys(keys, pairs["u"].to_numpy(), pairs["i"].to_numpy(), seen.shape[1])
    pairs = pairs[fresh]
    if pairs.empty:
        return None
    return Split(train, pairs["u"].to_numpy(np.int64), pairs["i"].to_numpy(np.int64), description, cutoff_us)


def last_fraction(inter: Interactions, fraction: float, when: np.ndarray | None = None) -> np.ndarray:
    """Mask of each user's last `fraction` of rows, ordered by `when` (default: time, else log order)."""
    n = len(inter.user_idx)
    if when is None:
        when = inter.ts if inter.ts is not None else np.arange(n)
    order = np.lexsort((np.arange(n), when, inter.user_idx))
    users = inter.user_idx[order]
    start = np.searchsorted(users, users, side="left")
    size = np.searchsorted(users, users, side="right") - start
    pos = np.arange(n) - start
    held = np.floor(size * fraction).astype(np.int64)
    test = np.empty(n, dtype=bool)
    test[order] = (size >= 2) & (pos >= size - held)
    return test


def sample_users(split: Split, max_users: int, seed: int) -> np.ndarray:
    users = distinct(split.test_user)
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
    recommended = distinct(lists[lists >= 0])
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


@dataclass
class Holdout:
    """A split with a model fitted on its training part, ready to score lists."""

    split: Split
    rec: Recaller
    users: np.ndarray  # evaluated users (train indices), sorted
    k: int

    def score(self, lists: np.ndarray) -> dict:
        return ranking_metrics(lists, self.users, self.split, len(self.split.train.items), self.k)

    def batches(self, size: int):
        for start in range(0, self.users.size, size):
            yield slice(start, start + size), self.rec.batch(self.users[start:start + size])

    def source_lists(self, size: int, sources: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each source's top-k (the spec's, or `sources`) for every evaluated user: name -> (items, scores)."""
        parts: dict[str, list] = {}
        for _, batch in self.batches(size):
            for name, items, scores in self.rec.source_lists(batch, self.k, sources):
                parts.setdefault(name, []).append((items, scores))
        return {name: (np.vstack([i for i, _ in p]), np.vstack([s for _, s in p])) for name, p in parts.items()}

    def merged(self, lists: dict[str, tuple[np.ndarray, np.ndarray]], size: int, blend: str | None = None,
               quotas: dict | None = None, weights: dict | None = None) -> np.ndarray:
        """The merged lists (blend + fallback top-up) from precomputed source lists."""
        out = []
        for rows, batch in self.batches(size):
            chunk = [(name, items[rows], scores[rows]) for name, (items, scores) in lists.items()]
            out.append(self.rec.merge(batch, chunk, self.k, blend, quotas, weights).items)
        return np.vstack(out)

    def baseline(self, size: int) -> np.ndarray:
        return np.vstack([popular_lists(self.rec.popular, batch, self.k) for _, batch in self.batches(size)])


def prepare_holdout(inter: Interactions, spec: JobSpec, end_us: int, blocked: np.ndarray) -> Holdout | None:
    """Split the window and fit the job's sources on the training part."""
    split = holdout_split(inter, spec.evaluate, end_us, spec.model.random_state)
    if split is None:
        return None
    rec = fit(split.train, spec, split.cutoff_us, blocked_of(inter, split.train, blocked), need_i2i=False)
    users = sample_users(split, spec.evaluate.max_users, spec.model.random_state)
    return Holdout(split, rec, users, spec.evaluate.k)


def holdout_metrics(inter: Interactions, spec: JobSpec, end_us: int, blocked: np.ndarray) -> dict | None:
    """Fit on the window minus the holdout; score each source, the merged list and the baseline."""
    held = prepare_holdout(inter, spec, end_us, blocked)
    if held is None:
        logger.warning("holdout evaluation skipped: the holdout or the training part is empty")
        return None
    size = spec.recall.u2i.batch_size
    lists = held.source_lists(size)
    k = held.k
    result = {
        "k": k, "split": held.split.description, "train_rows": len(held.split.train.user_idx),
        "relevant_pairs": int(held.split.test_user.size), "users_evaluated": int(held.users.size),
        "sources": {name: held.score(items) for name, (items, _) in lists.items()},
        "popular_baseline": held.score(held.baseline(size)),
        "merged": held.score(held.merged(lists, size)),
    }
    logger.info(f"holdout ({held.split.description}): merged recall@{k} {result['merged']['recall']:.4f}, "
                f"popular baseline {result['popular_baseline']['recall']:.4f}; "
                + ", ".join(f"{n} {m['recall']:.4f}" for n, m in result["sources"].items()))
    return result


def blocked_of(inter: Interactions, train: Interactions, blocked: np.ndarray) -> np.ndarray:
    """The blocklist mask carried over to a re-encoded subset's item map."""
    return blocked[inter.items.index_of(train.items.values)]


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


def backtest(read_served: Callable[[pa.Array], pa.Table], prev_date: str, inter: Interactions,
             prev_end_us: int, k: int, max_users: int, seed: int) -> dict:
    """Score what was served: the u2i table published for `prev_date` against what its users did
    after it (up to this run's date), counting items they had not touched before it.

    `read_served(user_ids)` returns the served rows (user_id, item_id, rank) of those users only,
    so memory stays bounded by `max_users`, not by the size of the served table.
    """
    if inter.ts is None:
        return {"date": prev_date, "skipped": "the log has no time column"}
    after = inter.ts >= prev_end_us
    if not after.any():
        return {"date": prev_date, "skipped": "no interactions after that date in this window"}
    n_items = len(inter.items)
    before_keys = distinct(inter.user_idx[~after].astype(np.int64) * n_items + inter.item_idx[~after])
    keys = distinct(inter.user_idx[after].astype(np.int64) * n_items + inter.item_idx[after])
    fresh = keys[~contains(before_keys, keys)]
    if fresh.size == 0:
        return {"date": prev_date, "skipped": "returning users touched no new item"}
    returning = Split(inter, fresh // n_items, fresh % n_items, "", prev_end_us)
    sampled = sample_users(returning, max_users, seed)
    served = read_served(inter.users.values.take(pa.array(sampled)))
    users = inter.users.index_of(served.column("user_id").combine_chunks())
    items = inter.items.index_of(served.column("item_id").combine_chunks())
    eval_users = distinct(users[users >= 0])
    covered = contains(eval_users, returning.test_user)
    split = Split(inter, returning.test_user[covered], returning.test_item[covered], f"served on {prev_date}",
                  prev_end_us)
    if eval_users.size == 0:
        return {"date": prev_date, "skipped": "no served user came back"}
    lists = served_lists(users, items, served.column("rank").to_numpy(), eval_users, k)
    metrics = ranking_metrics(lists, eval_users, split, n_items, k)
    return {"date": prev_date, "k": k, **metrics, "returning_users": int(distinct(returning.test_user).size),
            "sampled_users": int(sampled.size), "sampled_users_served": int(eval_users.size)}


def served_lists(users: np.ndarray, items: np.ndarray, rank: np.ndarray, wanted: np.ndarray, k: int) -> np.ndarray:
    """B x k item matrix (by rank) of the served rows of `wanted` users; -1 pads."""
    keep = contains(wanted, users) & (rank <= k)
    u, i, r = users[keep], items[keep], rank[keep] - 1
    out = np.full((wanted.size, k), -1, np.int64)
    out[np.searchsorted(wanted, u), r] = i
    return out
