"""Row operations on fixed-width candidate matrices (items int64 with -1 pads, scores float32):
de-duplication, compaction, per-row top-k, and drawing from a global ranking. One batch of users
at a time; every function is pure."""
from __future__ import annotations

import numpy as np

from recall.arrays import distinct
from recall.kernel.keys import pack
from recall.kernel.state import Ranking, UserBatch


def first_occurrence(items: np.ndarray) -> np.ndarray:
    """B x W mask of entries that are not a repeat of an earlier entry in their row."""
    if items.shape[1] <= 1:
        return np.ones(items.shape, dtype=bool)
    order = np.argsort(items, axis=1, kind="stable")
    ranked = np.take_along_axis(items, order, 1)
    repeat = np.zeros(items.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    out = np.empty_like(repeat)
    np.put_along_axis(out, order, ~repeat, 1)
    return out


def compact(valid: np.ndarray, width: int, *arrays: np.ndarray, fills: tuple) -> list[np.ndarray]:
    """Move the valid entries of each row to the front (order kept), cut to `width`, pad the rest."""
    order = np.argsort(~valid, axis=1, kind="stable")[:, :width]
    keep = np.take_along_axis(valid, order, 1)
    out = []
    for arr, fill in zip(arrays, fills):
        taken = np.take_along_axis(arr, order, 1)
        out.append(np.where(keep, taken, fill).astype(arr.dtype))
    if width > order.shape[1]:
        pad = width - order.shape[1]
        out = [np.pad(a, ((0, 0), (0, pad)), constant_values=f) for a, f in zip(out, fills)]
    return out


def pad_to(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen B x W lists (W <= k) to B x k with pads."""
    pad = k - items.shape[1]
    return (np.pad(items, ((0, 0), (0, pad)), constant_values=-1),
            np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf))


def sum_repeats(items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, one entry per distinct item carrying the row's total of `values` for it (the other
    entries become pads); the first of a run of equal items is the earliest in the input order.
    Also returns the stable by-item order used, to carry other columns along."""
    order = np.argsort(items, axis=1, kind="stable")
    items = np.take_along_axis(items, order, 1)
    values = np.take_along_axis(values, order, 1)
    first = np.ones(items.shape, dtype=bool)
    first[:, 1:] = items[:, 1:] != items[:, :-1]
    run = np.cumsum(first.ravel()) - 1
    totals = np.bincount(run, weights=values.ravel())[run].reshape(items.shape)
    keep = first & (items >= 0)
    return np.where(keep, items, -1), np.where(keep, totals, 0.0), order


def best_per_row(items: np.ndarray, scores: np.ndarray, k: int,
                 *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each row's k best by score (ties by item), pads (-1) last; `others` follow the same order."""
    scores = np.where(items >= 0, scores, -np.inf).astype(np.float32)
    order = np.argsort(pack(scores + np.float32(0), items), axis=1, kind="stable")[:, :k]  # -0.0 ties 0.0
    out = [np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)]
    out += [np.take_along_axis(o, order, 1) for o in others]
    if out[0].shape[1] < k:
        fills = (-1, -np.inf) + tuple(-1 for _ in others)
        out = [np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=f) for a, f in zip(out, fills)]
    return tuple(out)


def allowed_seen_counts(batch: UserBatch, allowed: np.ndarray) -> np.ndarray:
    """Per user: items seen that are still recommendable (not blocked)."""
    row = np.repeat(np.arange(batch.size), np.diff(batch.seen.indptr))
    return np.bincount(row, weights=allowed[batch.seen.indices], minlength=batch.size).astype(np.int64)


def from_ranking(ranking: Ranking, batch: UserBatch, need: np.ndarray,
                 taken: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the first need[u] items of `ranking` not seen and not already in `taken`.

    Works on ranking positions: with a row's excluded positions sorted as e_0 < e_1 < ..., its
    j-th free position is j + #{i : e_i - i <= j}, one searchsorted for all rows at once, so the
    cost follows the excluded items, not the length of the ranking.
    """
    width = int(need.max()) if need.size else 0
    items = np.full((batch.size, width), -1, np.int64)
    scores = np.full((batch.size, width), -np.inf, np.float32)
    if width == 0 or ranking.items.size == 0:
        return items, scores
    n = ranking.items.size
    position = np.full(batch.n_items, -1, np.int64)
    position[ranking.items] = np.arange(n)
    row = np.repeat(np.arange(batch.size, dtype=np.int64), np.diff(batch.seen.indptr))
    pos = position[batch.seen.indices]
    if taken is not None:
        at = np.nonzero(taken >= 0)
        row, pos = np.concatenate([row, at[0]]), np.concatenate([pos, position[taken[at]]])
    stride = n + 1
    excluded = distinct(row[pos >= 0] * stride + pos[pos >= 0])  # sorted by row, then position
    ex_row = excluded // stride
    starts = np.searchsorted(ex_row, np.arange(batch.size))
    gaps = excluded - np.arange(excluded.size) + starts[ex_row]  # row * stride + (e_i - i)
    j = np.broadcast_to(np.arange(width), (batch.size, width))
    query = np.arange(batch.size, dtype=np.int64)[:, None] * stride + j
    free = j + np.searchsorted(gaps, query, side="right") - starts[:, None]
    ok = (j < need[:, None]) & (free < n)
    got = np.where(ok, free, 0)
    items[ok], scores[ok] = ranking.items[got[ok]], ranking.scores[got[ok]]
    return items, scores
