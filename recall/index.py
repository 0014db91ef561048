"""Item indexes for top-k by inner product: exact (blocked BLAS scoring with a running threshold)
or approximate (FAISS IVF on vectors transformed so L2 order equals inner-product order)."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

TILE_QUERIES = 512  # queries scored together: one task of the thread pool
TILE_ITEMS = 1024  # items scored per product; a 512 x 1024 float32 block stays in a core's L2 cache
_PAD = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_LOW = np.uint64(0xFFFF_FFFF)


@dataclass
class Searcher:
    """An index over a subset of items; results come back as item indices (-1 for none)."""

    index: faiss.Index | None  # the IVF index (approximate); None for exact search
    item_idx: np.ndarray  # int64: index position -> item index
    vectors: np.ndarray  # the indexed vectors, row i at position i
    approx: bool

    @property
    def size(self) -> int:
        return len(self.item_idx)

    def search(self, queries: np.ndarray, k: int,
               exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (items int64, scores float32), -1 and -inf where fewer exist.

        Rows come sorted by score descending, ties by item index ascending. `exclude` (exact
        search only) is a CSR matrix, one row per query, of item indices that may not appear.
        """
        k = min(k, self.size)
        if k <= 0 or len(queries) == 0:
            return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if not self.approx:
            return exact_top_k(q, self.vectors, self.item_idx, k, exclude, faiss.omp_get_max_threads())
        if exclude is not None:
            raise ValueError("approximate search cannot exclude items; fetch more and filter")
        scores, pos = self.index.search(np.hstack([q, np.zeros((len(q), 1), np.float32)]), k)
        found = pos >= 0
        items = np.where(found, self.item_idx[np.where(found, pos, 0)], -1)
        scores, items = sort_rows(np.where(found, scores, -np.inf).astype(np.float32), items)
        return items, scores


# --- exact search ------------------------------------------------------------------


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, item_idx: np.ndarray, k: int,
                exclude: sp.csr_matrix | None, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of queries @ vectors.T, excluded (query, item) pairs never returned.

    Queries are scored in tiles by BLAS, one thread per tile of queries (BLAS pinned to one
    thread, so the threads do not fight). Each tile keeps a running top-k; only scores at or
    above its current k-th best are extracted (one vectorised compare), and the top-k is
    re-merged every few item tiles, so selection costs little next to the product itself.
    """
    n = len(queries)
    keys = np.empty((n, k), np.uint64)
    position = np.full(int(item_idx.max()) + 1 if item_idx.size else 0, -1, np.int64)
    position[item_idx] = np.arange(item_idx.size)
    excluded = _excluded_positions(exclude, position, n)

    def tile(start: int) -> None:
        stop = min(start + TILE_QUERIES, n)
        rows, cols = (None, None) if excluded is None else _slice_pairs(excluded, start, stop)
        keys[start:stop] = _tile_top_k(queries[start:stop], vectors, item_idx, k, rows, cols)

    starts = range(0, n, TILE_QUERIES)
    with threadpool_limits(limits=1, user_api="blas"):
        if threads <= 1 or n <= TILE_QUERIES:
            for start in starts:
                tile(start)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(tile, starts))
    items, scores = unpack(keys)
    gone = ~np.isfinite(scores)  # excluded or missing: only at the end of a row
    return np.where(gone, -1, items), np.where(gone, -np.inf, scores).astype(np.float32)


def _excluded_positions(exclude: sp.csr_matrix | None, position: np.ndarray,
                        n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row, index position) of excluded pairs on indexed items, sorted by row, and row offsets."""
    if exclude is None or exclude.nnz == 0:
        return None
    if exclude.shape[0] != n:
        raise ValueError(f"exclude has {exclude.shape[0]} rows for {n} queries")
    cols = exclude.indices.astype(np.int64)
    known = cols < position.size
    pos = np.full(cols.size, -1, np.int64)
    pos[known] = position[cols[known]]
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(exclude.indptr))
    keep = pos >= 0
    row, pos = row[keep], pos[keep]
    return row, pos, np.searchsorted(row, np.arange(n + 1))


def _slice_pairs(excluded, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile's excluded pairs ordered by position, rows relative to the tile."""
    row, pos, offsets = excluded
    a, b = offsets[start], offsets[stop]
    order = np.argsort(pos[a:b], kind="stable")
    return row[a:b][order] - start, pos[a:b][order]


def _tile_top_k(q: np.ndarray, vectors: np.ndarray, item_idx: np.ndarray, k: int,
                ex_rows: np.ndarray | None, ex_pos: np.ndarray | None) -> np.ndarray:
    """Packed keys of the top-k of one tile of queries, best first."""
    t, n_items = len(q), len(vectors)
    best = np.full((t, k), _PAD, np.uint64)
    threshold = np.full(t, -np.inf, np.float32)
    block = np.empty(t * TILE_ITEMS, np.float32)
    hit = np.empty(t * TILE_ITEMS, bool)
    rows, scores_in, items_in, pending = [], [], [], 0
    for lo in range(0, n_items, TILE_ITEMS):
        hi = min(lo + TILE_ITEMS, n_items)
        width = hi - lo
        scores = block[:t * width].reshape(t, width)
        np.matmul(q, vectors[lo:hi].T, out=scores)
        if ex_pos is not None:
            a, b = np.searchsorted(ex_pos, (lo, hi))
            scores[ex_rows[a:b], ex_pos[a:b] - lo] = -np.inf
        if lo == 0 and width > k:  # the first tile's k-th best is a first threshold
            threshold = np.partition(scores, width - k, axis=1)[:, width - k]
        flat = np.flatnonzero(np.greater_equal(scores, threshold[:, None], out=hit[:t * width].reshape(t, width)))
        row = flat // width
        rows.append(row.astype(np.int16))
        scores_in.append(scores.ravel()[flat])
        items_in.append(item_idx[lo + flat - row * width])
        pending += flat.size
        # merge when the candidates would outgrow the kept lists, so the threshold keeps rising
        if lo == 0 or pending * 2 >= t * k or hi == n_items:
            if pending:
                best = _merge(best, np.concatenate(rows), pack(np.concatenate(scores_in), np.concatenate(items_in)))
            rows, scores_in, items_in, pending = [], [], [], 0
            threshold = unpack(best[:, k - 1])[1]
    return best


def _merge(best: np.ndarray, row: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The top-k of each row's current best and its new candidates (`row` as int16)."""
    t, k = best.shape
    counts = np.bincount(row, minlength=t)
    touched = np.flatnonzero(counts)
    order = np.argsort(row, kind="stable")  # radix sort on int16
    row, new = row[order].astype(np.int64), new[order]
    slot = np.zeros(t, np.int64)
    slot[touched] = np.arange(touched.size)
    start = np.cumsum(counts) - counts
    dense = np.full((touched.size, k + int(counts.max())), _PAD, np.uint64)
    dense[:, :k] = best[touched]
    dense.reshape(-1)[slot[row] * dense.shape[1] + k + np.arange(row.size) - start[row]] = new
    dense.sort(axis=1)
    best[touched] = dense[:, :k]
    return best


def pack(scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One uint64 per (score, item) whose ascending order is score descending, then item ascending.

    Item indices must be below 2^32 - 1; -1 items (pads) sort after every item of equal score.
    """
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFF_FFFF)  # int32 order == float order
    descending = (~ordered).view(np.uint32) ^ np.uint32(0x8000_0000)
    return (descending.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint32).astype(np.uint64)


def unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(items int64 with -1 for pads, scores float32 with -inf for pads) of packed keys."""
    ordered = ~((keys >> np.uint64(32)).astype(np.uint32) ^ np.uint32(0x8000_0000)).view(np.int32)
    scores = (ordered ^ ((ordered >> 31) & 0x7FFF_FFFF)).view(np.float32)
    low = (keys & _LOW).astype(np.int64)
    pad = low == 0xFFFF_FFFF
    return np.where(pad, -1, low), np.where(pad, np.float32(-np.inf), scores)


def sort_rows(scores: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by score descending, ties by item index ascending, so output is deterministic."""
    if scores.shape[1] == 0:
        return scores, items
    keys = pack(scores + np.float32(0), items)  # + 0 folds -0.0 into 0.0, so they tie
    keys.sort(axis=1)
    items, scores = unpack(keys)
    return scores, items


def exact_index(vectors: np.ndarray, item_idx: np.ndarray) -> Searcher:
    """Items by descending norm: the likely winners are scored first, so the threshold rises early."""
    vectors = np.asarray(vectors, dtype=np.float32)
    order = np.argsort(-np.einsum("ij,ij->i", vectors, vectors), kind="stable")
    return Searcher(None, item_idx.astype(np.int64)[order], np.ascontiguousarray(vectors[order]), approx=False)


def ivf_defaults(n: int, k: int) -> tuple[int, int]:
    """IVF lists about sqrt(n); probe about a twelfth of them, and never fewer than hold 8k items
    (recall@100 about 0.96 on ALS factors of a power-law log)."""
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    nprobe = max(math.ceil(nlist / 12), math.ceil(8 * k * nlist / n))
    return nlist, min(nlist, nprobe)


def approx_index(vectors: np.ndarray, item_idx: np.ndarray, nlist: int, nprobe: int, seed: int,
                 k: int = 100) -> Searcher:
    """IVF over vectors augmented with sqrt(max_norm^2 - norm^2), so that L2 neighbours are
    inner-product neighbours (Bachrach et al. 2014): the lists are k-means cells of the augmented
    vectors, a query (augmented by 0) probes its L2-nearest cells, and the cells are scanned by
    inner product, which on the augmented vectors is exactly the query's score."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    norms = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0)).astype(np.float32)
    augmented = np.ascontiguousarray(np.hstack([vectors, extra[:, None]]))
    default_nlist, default_nprobe = ivf_defaults(n, k)
    nlist = min(nlist or default_nlist, n)
    clustering = faiss.Clustering(dim + 1, nlist)
    clustering.seed = seed
    rng = np.random.default_rng(seed)
    cap = clustering.max_points_per_centroid * nlist
    sample = augmented if n <= cap else augmented[np.sort(rng.choice(n, cap, replace=False))]
    quantizer = faiss.IndexFlatL2(dim + 1)
    clustering.train(sample, quantizer)
    index = faiss.IndexIVFFlat(quantizer, dim + 1, nlist, faiss.METRIC_INNER_PRODUCT)
    index.add(augmented)
    index.nprobe = min(nprobe or (default_nprobe if nlist == default_nlist else ivf_defaults(n, k)[1]), nlist)
    return Searcher(index, item_idx.astype(np.int64), vectors, approx=True)


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine via inner product); zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
