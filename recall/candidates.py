"""Candidate sources for a batch of users, seen/blocked filtering, blending and fallback top-up.

Candidate lists are fixed-width matrices: items (int64, -1 pads), scores (float32) and, after
the merge, source codes (int8). Every function works on one batch of users at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recall.index import Searcher, sort_rows

SOURCES = ("als", "popular", "recent_popular", "item_based")
SOURCE_CODE = {name: i for i, name in enumerate(SOURCES)}
RRF_OFFSET = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
# weights of the weighted blend for sources the spec gives none: ALS leads, the others add
DEFAULT_WEIGHTS = {"als": 1.0, "item_based": 0.5, "recent_popular": 0.25, "popular": 0.1}
MAX_POOL_CELLS = 1 << 24  # bound on rows x width when drawing from a ranking


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
    query = np.asarray(rows, dtype=np.int64) * n_items + items
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return (keys[pos] == query) & (items >= 0)


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
    """Per user, the first need[u] items of `ranking` not seen and not already in `taken`."""
    width = int(need.max()) if need.size else 0
    items = np.full((batch.size, width), -1, np.int64)
    scores = np.full((batch.size, width), -np.inf, np.float32)
    if width == 0 or ranking.items.size == 0:
        return items, scores
    seen_counts = np.diff(batch.seen.indptr)
    taken_counts = np.zeros(batch.size, np.int64) if taken is None else (taken >= 0).sum(axis=1)
    pool = np.minimum(need + seen_counts + taken_counts, ranking.items.size)
    rows_all = np.flatnonzero(need > 0)
    rows_all = rows_all[np.argsort(pool[rows_all], kind="stable")]
    seen_keys = csr_keys(batch.seen)
    taken_keys = dense_keys(taken, batch.n_items) if taken is not None else np.zeros(0, np.int64)
    start = 0
    while start < rows_all.size:
        # widest pool in a chunk sets its width; chunks keep rows x width bounded
        end = start + 1
        while end < rows_all.size and (end - start + 1) * pool[rows_all[end]] <= MAX_POOL_CELLS:
            end += 1
        rows = rows_all[start:end]
        p = int(pool[rows].max())
        cand = np.broadcast_to(ranking.items[:p], (rows.size, p))
        cand_scores = np.broadcast_to(ranking.scores[:p], (rows.size, p))
        ok = ~in_keys(seen_keys, rows[:, None], cand, batch.n_items)
        ok &= ~in_keys(taken_keys, rows[:, None], cand, batch.n_items)
        ok &= np.cumsum(ok, axis=1) <= need[rows][:, None]
        items[rows], scores[rows] = compact(ok, width, cand, cand_scores, fills=(-1, -np.inf))
        start = end
    return items, scores


def item_based(neighbours: np.ndarray, similarity: np.ndarray, recent: np.ndarray, batch: Batch,
               allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unseen neighbours of each user's recent items, scored by summed similarity."""
    nb = neighbours[np.maximum(recent, 0)]  # B x R x N
    sim = np.where((recent >= 0)[:, :, None] & (nb >= 0), similarity[np.maximum(recent, 0)], 0.0)
    flat_items = nb.reshape(batch.size, -1)
    flat_sims = sim.reshape(batch.size, -1).astype(np.float64)
    valid = (flat_items >= 0) & (flat_sims > 0)
    valid &= allowed[np.maximum(flat_items, 0)]
    row = np.broadcast_to(np.arange(batch.size)[:, None], flat_items.shape)
    keys = row[valid].astype(np.int64) * batch.n_items + flat_items[valid]
    uniq, inv = np.unique(keys, return_inverse=True)
    total = np.bincount(inv, weights=flat_sims[valid]).astype(np.float32)
    urow, uitem = uniq // batch.n_items, uniq % batch.n_items
    unseen = ~in_keys(csr_keys(batch.seen), urow, uitem, batch.n_items)
    urow, uitem, total = urow[unseen], uitem[unseen], total[unseen]
    order = np.lexsort((uitem, -total, urow))
    urow, uitem, total = urow[order], uitem[order], total[order]
    starts = np.searchsorted(urow, np.arange(batch.size))
    rank = np.arange(urow.size) - starts[urow]
    keep = rank < k
    items = np.full((batch.size, k), -1, np.int64)
    scores = np.full((batch.size, k), -np.inf, np.float32)
    items[urow[keep], rank[keep]] = uitem[keep]
    scores[urow[keep], rank[keep]] = total[keep]
    return items, scores


# --- blending --------------------------------------------------------------------


def blend(lists: list[tuple[str, np.ndarray, np.ndarray]], k: int, mode: str = "ordered",
          quotas: dict[str, float] | None = None, weights: dict[str, float] | None = None) -> Merged:
    """Merge per-source lists into one list of at most k unique items per user.

    ordered: sources in the order given, each filling what the previous left;
    quota:   source s first gets round(quota_s * k) slots, then the rest fill in order;
    weighted: reciprocal-rank fusion, sum of weight_s / (60 + rank_s); a row's source is the
             source contributing most to its fused score.
    """
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
    n_rows = lists[0][1].shape[0]
    items = np.hstack([i for _, i, _ in lists])
    rank = np.hstack([np.broadcast_to(np.arange(i.shape[1]), i.shape) for _, i, _ in lists])
    w = np.hstack([np.full(i.shape, weights.get(name, DEFAULT_WEIGHTS[name])) for name, i, _ in lists])
    contrib = w / (RRF_OFFSET + 1 + rank)
    code = np.hstack([np.full(i.shape, SOURCE_CODE[name], np.int8) for name, i, _ in lists])
    valid = items >= 0
    if not valid.any():
        return Merged(np.full((n_rows, k), -1, np.int64), np.full((n_rows, k), -np.inf, np.float32),
                      np.full((n_rows, k), -1, np.int8))
    width = int(items.max(initial=0)) + 1
    row = np.broadcast_to(np.arange(n_rows)[:, None], items.shape)[valid].astype(np.int64)
    keys = row * width + items[valid]
    uniq, inv = np.unique(keys, return_inverse=True)
    total = np.bincount(inv, weights=contrib[valid])
    # the source with the largest contribution to each (row, item)
    best = np.lexsort((-contrib[valid], inv))
    first = np.r_[True, inv[best][1:] != inv[best][:-1]]
    src = np.empty(uniq.size, np.int8)
    src[inv[best][first]] = code[valid][best][first]
    urow, uitem = uniq // width, uniq % width
    order = np.lexsort((uitem, -total, urow))
    urow, uitem, total, src = urow[order], uitem[order], total[order], src[order]
    starts = np.searchsorted(urow, np.arange(n_rows))
    pos = np.arange(urow.size) - starts[urow]
    keep = pos < k
    out_items = np.full((n_rows, k), -1, np.int64)
    out_scores = np.full((n_rows, k), -np.inf, np.float32)
    out_src = np.full((n_rows, k), -1, np.int8)
    out_items[urow[keep], pos[keep]] = uitem[keep]
    out_scores[urow[keep], pos[keep]] = total[keep]
    out_src[urow[keep], pos[keep]] = src[keep]
    return Merged(out_items, out_scores, out_src)


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


__all__ = ["Ranking", "Batch", "Merged", "nearest_unseen", "from_ranking", "item_based", "blend",
           "top_up", "ranked_neighbours", "sort_rows", "SOURCES", "SOURCE_CODE"]
