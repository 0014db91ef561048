"""Top-k by inner product over an ItemIndex, scored with BLAS tile by tile and a running
threshold: exact (every item) or approximate (IVF: only the cells a query probes, the cells being
k-means cells of vectors transformed so that L2 order equals inner-product order)."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from recall.kernel.keys import pack, unpack
from recall.kernel.state import ItemIndex

TILE_QUERIES = 512  # exact search: queries scored together, one task of the thread pool
TILE_ITEMS = 1024  # exact search: items per product; a 512 x 1024 float32 block stays near L2
IVF_TILE_QUERIES = 4096  # approximate search: queries per task (each cell meets more of them)
NEAR_CELLS = 1  # approximate search: each query's nearest cell is scored first, to set its threshold
SORT_WIDTH = 256  # keys per row that numpy sorts with a sorting network
_PAD = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def search(index: ItemIndex, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
           threads: int = 1, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: (items int64, scores float32), -1 and -inf where fewer exist.

    Rows come sorted by score descending, ties by item index ascending. `exclude` is a CSR
    matrix, one row per query, of item indices that may not appear (e.g. items already seen).
    An IVF index scans `nprobe` cells (default: the index's own) and returns fewer than k where
    the probed cells hold fewer. Query tiles run on `threads` threads.
    """
    k = min(k, index.size)
    if k <= 0 or len(queries) == 0:
        return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    excluded = _excluded_positions(exclude, index.item_idx, len(q))
    if index.approx:
        probes = probe(index, q, nprobe or index.nprobe)

        def tile(start: int, stop: int) -> np.ndarray:
            return _cells_top_k(q[start:stop], index, probes[start:stop], k, _slice_pairs(excluded, start, stop))

        keys = _in_tiles(len(q), IVF_TILE_QUERIES, k, tile, threads)
    else:
        def tile(start: int, stop: int) -> np.ndarray:
            return _items_top_k(q[start:stop], index, k, _slice_pairs(excluded, start, stop))

        keys = _in_tiles(len(q), TILE_QUERIES, k, tile, threads)
    items, scores = unpack(keys)
    gone = ~np.isfinite(scores)  # excluded or not found: only at the end of a row
    return np.where(gone, -1, items), np.where(gone, np.float32(-np.inf), scores)


def probe(index: ItemIndex, queries: np.ndarray, nprobe: int) -> np.ndarray:
    """Each query's `nprobe` nearest cells, nearest first. Probing is by direction: the cells were
    built on unit-bounded vectors, and a unit query (augmented by 0) ranks them by L2 distance,
    |c|^2 - 2 q.c, i.e. by inner product (a raw query's norm would let |centroid| decide)."""
    nprobe = min(nprobe, index.nlist)
    unit = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), np.float32(1e-12))
    dim = unit.shape[1]
    centroids = index.centroids
    distance = np.einsum("ij,ij->i", centroids, centroids)[None, :] - 2 * (unit @ centroids[:, :dim].T)
    if nprobe < index.nlist:
        near = np.argpartition(distance, nprobe - 1, axis=1)[:, :nprobe]
    else:
        near = np.broadcast_to(np.arange(index.nlist), distance.shape)
    order = np.lexsort((near, np.take_along_axis(distance, near, 1)), axis=1)
    return np.take_along_axis(near, order, 1).astype(np.int64)


# --- the running top-k ---------------------------------------------------------------


class RunningTopK:
    """Each row's k best (score, item) so far, as packed keys, and the threshold to beat.

    Blocks of scores are offered one at a time; only entries at or above a row's current k-th
    best are extracted (one vectorised compare), and the kept lists are re-merged whenever the
    extracted candidates would outgrow them, so the threshold keeps rising and selection costs
    little next to the products themselves.
    """

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.best = np.full((rows, k), _PAD, np.uint64)  # sorted: best first
        self.threshold = np.full(rows, -np.inf, np.float32)
        self._rows: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._pending = 0

    def offer(self, scores: np.ndarray, items: np.ndarray, rows: np.ndarray | None = None) -> None:
        """scores: len(rows) x len(items) (all rows when rows is None), C-contiguous."""
        width = scores.shape[1]
        threshold = self.threshold if rows is None else self.threshold[rows]
        if width > self.k and np.isneginf(threshold).any():
            # a block's own k-th best is a first threshold for rows that have none yet
            threshold = np.maximum(threshold, np.partition(scores, width - self.k, axis=1)[:, width - self.k])
        flat = np.flatnonzero(scores >= threshold[:, None])
        at = flat // width
        self._rows.append(at if rows is None else rows[at])
        self._scores.append(scores.reshape(-1)[flat])
        self._items.append(items[flat - at * width])
        self._pending += flat.size
        if self._pending * 2 >= self.best.size:
            self.merge()

    def merge(self) -> None:
        if self._pending:
            row = np.concatenate(self._rows)
            new = pack(np.concatenate(self._scores), np.concatenate(self._items))
            self.best = _merge(self.best, row, new)
            self.threshold = unpack(self.best[:, self.k - 1])[1]
        self._rows, self._scores, self._items, self._pending = [], [], [], 0

    def result(self) -> np.ndarray:
        self.merge()
        return self.best


def _merge(best: np.ndarray, row: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The top-k of each row's current best and its new candidates."""
    t, k = best.shape
    counts = np.bincount(row, minlength=t)
    order = np.argsort(row.astype(np.int16) if t < 2**15 else row, kind="stable")  # radix sort
    row, new = row[order], new[order]
    start = np.cumsum(counts) - counts
    touched = np.flatnonzero(counts)
    # rows of up to SORT_WIDTH keys sort far faster (a sorting network) than wider ones: the
    # few rows with many new candidates are merged apart, so they do not widen everyone's
    wide = counts[touched] > SORT_WIDTH - k
    for group in (touched[~wide], touched[wide]):
        if group.size == 0:
            continue
        slot = np.full(t, -1, np.int64)
        slot[group] = np.arange(group.size)
        mine = slot[row] >= 0
        at = row[mine]
        dense = np.full((group.size, k + int(counts[group].max())), _PAD, np.uint64)
        dense[:, :k] = best[group]
        dense.reshape(-1)[slot[at] * dense.shape[1] + k + np.flatnonzero(mine) - start[at]] = new[mine]
        dense.sort(axis=1)
        best[group] = dense[:, :k]
    return best


def _in_tiles(n: int, size: int, k: int, tile: Callable[[int, int], np.ndarray], threads: int) -> np.ndarray:
    """Run `tile` over query tiles on `threads` threads, BLAS pinned to one thread inside each so
    they do not fight; returns the n x k packed keys."""
    keys = np.empty((n, k), np.uint64)

    def run(start: int) -> None:
        keys[start:start + size] = tile(start, min(start + size, n))

    starts = range(0, n, size)
    with single_threaded_blas():
        if threads <= 1 or n <= size:
            for start in starts:
                run(start)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(run, starts))
    return keys


_controller: ThreadpoolController | None = None


def single_threaded_blas():
    """BLAS pinned to one thread. The libraries are looked up once per process (a lookup reads
    /proc/self/maps: ~3 ms, more than a whole one-user search), then only their limits change."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _items_top_k(q: np.ndarray, index: ItemIndex, k: int, excluded) -> np.ndarray:
    """Exact: every item, in tiles of TILE_ITEMS for a full tile of queries, wider for fewer (the
    block stays TILE_QUERIES x TILE_ITEMS scores), so one user (a fold-in) is one product and one
    selection rather than a tile loop."""
    top = RunningTopK(len(q), k)
    ex_rows, ex_pos = excluded
    width = max(TILE_ITEMS, TILE_QUERIES * TILE_ITEMS // max(len(q), 1))
    block = np.empty(len(q) * min(width, index.size), np.float32)
    for lo in range(0, index.size, width):
        hi = min(lo + width, index.size)
        scores = block[:len(q) * (hi - lo)].reshape(len(q), hi - lo)
        np.matmul(q, index.vectors[lo:hi].T, out=scores)
        a, b = np.searchsorted(ex_pos, (lo, hi))
        scores[ex_rows[a:b], ex_pos[a:b] - lo] = -np.inf
        top.offer(scores, index.item_idx[lo:hi])
    return top.result()


def _cells_top_k(q: np.ndarray, index: ItemIndex, probes: np.ndarray, k: int, excluded) -> np.ndarray:
    """Approximate: each probed cell is scored, with BLAS, for the queries that probe it. Every
    query's nearest cell goes first, so its threshold is high before the farther cells come."""
    top = RunningTopK(len(q), k)
    ex_rows, ex_pos = excluded
    local = np.full(len(q), -1, np.int64)
    near = min(NEAR_CELLS, probes.shape[1])
    for ranks in (probes[:, :near], probes[:, near:]):
        pair_query = np.repeat(np.arange(len(q)), ranks.shape[1])
        pair_cell = ranks.reshape(-1)
        keep = pair_cell >= 0
        order = np.argsort(pair_cell[keep], kind="stable")
        pair_query, pair_cell = pair_query[keep][order], pair_cell[keep][order]
        bounds = np.searchsorted(pair_cell, np.arange(index.nlist + 1))
        for cell in np.flatnonzero(np.diff(bounds)):
            lo, hi = index.offsets[cell], index.offsets[cell + 1]
            if hi == lo:
                continue
            rows = pair_query[bounds[cell]:bounds[cell + 1]]
            scores = q[rows] @ index.vectors[lo:hi].T
            a, b = np.searchsorted(ex_pos, (lo, hi))
            if b > a:
                local[rows] = np.arange(rows.size)
                at = local[ex_rows[a:b]]
                mine = at >= 0
                scores[at[mine], ex_pos[a:b][mine] - lo] = -np.inf
                local[rows] = -1
            top.offer(scores, index.item_idx[lo:hi], rows)
        top.merge()
    return top.result()


def _excluded_positions(exclude: sp.csr_matrix | None, item_idx: np.ndarray, n: int):
    """(row, index position) of excluded pairs on indexed items, by row, with row offsets."""
    if exclude is None or exclude.nnz == 0:
        return None
    if exclude.shape[0] != n:
        raise ValueError(f"exclude has {exclude.shape[0]} rows for {n} queries")
    position = np.full(max(int(item_idx.max()) + 1, exclude.shape[1]), -1, np.int64)
    position[item_idx] = np.arange(item_idx.size)
    pos = position[exclude.indices]
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(exclude.indptr))
    keep = pos >= 0
    row, pos = row[keep], pos[keep]
    return row, pos, np.searchsorted(row, np.arange(n + 1))


def _slice_pairs(excluded, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile's excluded pairs ordered by position, rows relative to the tile."""
    if excluded is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    row, pos, offsets = excluded
    a, b = offsets[start], offsets[stop]
    order = np.argsort(pos[a:b], kind="stable")
    return row[a:b][order] - start, pos[a:b][order]
