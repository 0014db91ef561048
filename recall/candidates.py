"""Candidate sources for a batch of users, seen/blocked filtering, blending and fallback top-up.

Candidate lists are fixed-width matrices: items (int64, -1 pads), scores (float32) and, after
the merge, source codes (int8). Every function works on one batch of users at a time.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recall.arrays import contains, distinct
from recall.config import U2I_SOURCES
from recall.index import Searcher, pack

SOURCES = U2I_SOURCES
SOURCE_CODE = {name: i for i, name in enumerate(SOURCES)}
RRF_OFFSET = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
# weights of the weighted blend for sources the spec gives none: ALS leads, the others add
DEFAULT_WEIGHTS = {"als": 1.0, "item_based": 0.5, "recent_popular": 0.25, "popular": 0.1}


@dataclass
class Ranking:
    """A global ordering of allowed items, best first."""

    items: np.ndarray  # int64
    scores: np.ndarray  # float32


@dataclass
class Batch:
    """What the sources need to know about one batch of users."""

    users: np.ndarray  # int64 user indices
    seen: sp.csr_matrix  # len(users) x n_items, sorted indices
    n_items: int

    @property
    def size(self) -> int:
        return len(self.users)

    @functools.cached_property
    def seen_keys(self) -> np.ndarray:
        """Sorted keys (batch row * n_items + item) of what each user saw."""
        return csr_keys(self.seen)


@dataclass
class Merged:
    items: np.ndarray  # int64, B x k, -1 pads at the end of short rows
    scores: np.ndarray  # float32
    source: np.ndarray  # int8 codes into SOURCES, -1 on pads

    def lengths(self) -> np.ndarray:
        return (self.items >= 0).sum(axis=1)


# --- membership ----------------------------------------------------------------


def csr_keys(rows: sp.csr_matrix) -> np.ndarray:
    """Sorted keys row * n_cols + col of a CSR matrix with sorted indices."""
    row = np.repeat(np.arange(rows.shape[0], dtype=np.int64), np.diff(rows.indptr))
    return row * rows.shape[1] + rows.indices.astype(np.int64)


def dense_keys(items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted keys of the non-pad entries of a B x W item matrix."""
    row = np.broadcast_to(np.arange(items.shape[0], dtype=np.int64)[:, None], items.shape)
    keys = row[items >= 0] * n_items + items[items >= 0]
    keys.sort()
    return keys


def in_keys(keys: np.ndarray, rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Is (rows, items) among the sorted `keys`? `rows` broadcasts against `items`; pads (-1) never are."""
    if keys.size == 0 or items.size == 0:
        return np.zeros(items.shape, dtype=bool)
    return contains(keys, np.asarray(rows, dtype=np.int64) * n_items + items) & (items >= 0)


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


# --- sources ---------------------------------------------------------------------


def allowed_seen_counts(batch: Batch, allowed: np.ndarray) -> np.ndarray:
    """Per user: items seen that are still recommendable (not blocked)."""
    row = np.repeat(np.arange(batch.size), np.diff(batch.seen.indptr))
    return np.bincount(row, weights=allowed[batch.seen.indices], minlength=batch.size).astype(np.int64)


def nearest_unseen(searcher: Searcher, vectors: np.ndarray, batch: Batch, allowed: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k unseen items per user by inner product. Seen items are excluded inside the search
    (the searcher holds only allowed items), so nothing is over-fetched or filtered afterwards;
    exact search never comes back short, approximate search may (the top-up fills the rest)."""
    got, got_scores = searcher.search(vectors, k, exclude=batch.seen)
    pad = k - got.shape[1]
    return (np.pad(got, ((0, 0), (0, pad)), constant_values=-1),
            np.pad(got_scores, ((0, 0), (0, pad)), constant_values=-np.inf))


def from_ranking(ranking: Ranking, batch: Batch, need: np.ndarray,
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


def item_based(neighbours: np.ndarray, similarity: np.ndarray, recent: np.ndarray, batch: Batch,
               allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unseen neighbours of each user's recent items, scored by summed similarity."""
    nb = neighbours[np.maximum(recent, 0)].reshape(batch.size, -1)  # B x (R * N)
    sim = similarity[np.maximum(recent, 0)].reshape(batch.size, -1).astype(np.float64)
    from_recent = np.repeat(recent >= 0, neighbours.shape[1], axis=1)
    valid = from_recent & (nb >= 0) & (sim > 0)
    valid &= allowed[np.maximum(nb, 0)]
    valid &= ~in_keys(batch.seen_keys, np.arange(batch.size)[:, None], nb, batch.n_items)
    items, totals, _ = sum_repeats(np.where(valid, nb, -1), np.where(valid, sim, 0.0))
    return best_per_row(items, totals.astype(np.float32), k)


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


# --- blending --------------------------------------------------------------------


def blend(lists: list[tuple[str, np.ndarray, np.ndarray]], k: int, mode: str = "ordered",
          quotas: dict[str, float] | None = None, weights: dict[str, float] | None = None) -> Merged:
    """Merge per-source lists into one list of at most k unique items per user.

    ordered: sources in the order given, each filling what the previous left;
    quota:   source s first gets round(quota_s * k) slots, then the rest fill in order;
    weighted: reciprocal-rank fusion, sum of weight_s / (60 + rank_s); a row's source is the
             source contributing most to its fused score.
    """
    if len(lists) == 1:  # one source's list is already unique, best first, pads last
        name, items, scores = lists[0]
        items, scores = items[:, :k], scores[:, :k].astype(np.float32)
        code = np.where(items >= 0, SOURCE_CODE[name], -1).astype(np.int8)
        return Merged(*compact(items >= 0, k, items, scores, code, fills=(-1, -np.inf, -1)))
    if mode == "weighted":
        return fuse(lists, k, weights or {})
    items = np.hstack([i for _, i, _ in lists])
    scores = np.hstack([s for _, _, s in lists]).astype(np.float32)
    source = np.hstack([np.full(i.shape, SOURCE_CODE[name], np.int8) for name, i, _ in lists])
    valid = (items >= 0) & first_occurrence(items)
    if mode == "quota" and quotas:
        first = np.zeros(items.shape, dtype=bool)
        for name, _, _ in lists:
            mine = valid & (source == SOURCE_CODE[name])
            slots = int(round(quotas.get(name, 0.0) * k))
            first |= mine & (np.cumsum(mine, axis=1) <= slots)
        order = np.argsort(~first, axis=1, kind="stable")  # quota picks first, then the rest in order
        items, scores, source, valid = (np.take_along_axis(a, order, 1) for a in (items, scores, source, valid))
    out = compact(valid, k, items, scores, source, fills=(-1, -np.inf, -1))
    return Merged(*out)


def fuse(lists: list[tuple[str, np.ndarray, np.ndarray]], k: int, weights: dict[str, float]) -> Merged:
    items = np.hstack([i for _, i, _ in lists])
    rank = np.hstack([np.broadcast_to(np.arange(i.shape[1]), i.shape) for _, i, _ in lists])
    w = np.hstack([np.full(i.shape, weights.get(name, DEFAULT_WEIGHTS[name])) for name, i, _ in lists])
    contrib = np.where(items >= 0, w / (RRF_OFFSET + 1 + rank), 0.0)
    code = np.hstack([np.full(i.shape, SOURCE_CODE[name], np.int8) for name, i, _ in lists])
    # largest contribution first, so each item's run starts with the source that counts most
    lead = np.argsort(-contrib, axis=1, kind="stable")
    items, contrib, code = (np.take_along_axis(a, lead, 1) for a in (items, contrib, code))
    items, totals, order = sum_repeats(items, contrib)
    code = np.where(items >= 0, np.take_along_axis(code, order, 1), -1).astype(np.int8)
    out_items, out_scores, out_src = best_per_row(items, totals, k, code)
    return Merged(out_items, out_scores, np.where(out_items >= 0, out_src, -1).astype(np.int8))


def top_up(merged: Merged, fallback: Ranking, batch: Batch, allowed_count: int,
           allowed_seen: np.ndarray, k: int) -> Merged:
    """Fill every row to min(k, unseen allowed items) from the fallback ranking."""
    target = np.minimum(k, allowed_count - allowed_seen)
    need = np.maximum(target - merged.lengths(), 0)
    if not need.any():
        return merged
    extra, extra_scores = from_ranking(fallback, batch, need, taken=merged.items)
    items = np.hstack([merged.items, extra])
    scores = np.hstack([merged.scores, extra_scores])
    source = np.hstack([merged.source, np.where(extra >= 0, SOURCE_CODE["popular"], -1).astype(np.int8)])
    out = compact(items >= 0, k, items, scores, source, fills=(-1, -np.inf, -1))
    return Merged(*out)


def ranked_neighbours(searcher: Searcher, vectors: np.ndarray, query_items: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """i2i: top-k neighbours of each query item by cosine, the item itself excluded."""
    got, scores = searcher.search(vectors, k + 1)
    valid = (got >= 0) & (got != query_items[:, None]) & np.isfinite(scores)
    items, scores = compact(valid, k, got, scores, fills=(-1, -np.inf))
    return items, scores

