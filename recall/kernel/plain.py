"""The candidate kernels of recall.kernel.compiled in NumPy, one user at a time: the same lists and
the same score bits as the compiled kernels give a batch of one user (tests/test_plain.py).

What makes the bits the same: every float is computed by the same operations in the same order.
Products go to the BLAS call numba's np.dot makes for one query (SciPy's sgemv over the item tile,
sdot for a tile of one item; numba links SciPy's BLAS), over the same item tiles; sums that the
compiled kernels take sequentially are taken sequentially here too (cumsum, bincount, a row added
at a time), never pairwise as np.sum would. Selection needs no care: both keep the k smallest
packed keys (recall.kernel.keys.pack: score descending, ties by item) of the same candidates; the
compiled kernels only skip, by bounds, candidates that cannot make the cut.

For a server's fold-in (recall.kernel.backend.plain_kernels): it answers one user in about twice
the time the compiled kernels take (1.2 against 0.6 ms at 50k items: `python -m bench.foldin`),
and a process that does so weighs 92 MB instead of 164 (NumPy and SciPy's BLAS, not numba and
LLVM). Batches of many users belong to the compiled kernels; here each user is a batch of one.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg.blas import sdot, sgemv

from recall.kernel.keys import pack, unpack as unpack_keys
from recall.kernel.pool import single_threaded_blas
from recall.kernel.rows import best_per_row, sum_repeats

TILE_ITEMS = 2048  # exact search: items per product (recall.kernel.compiled takes the same tiles)


def product(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """vectors @ query (float32) as numba's np.dot(query[None], vectors.T, out) computes it."""
    if len(vectors) == 1:
        return np.array([sdot(query, vectors[0])], np.float32)
    return sgemv(1.0, np.ascontiguousarray(vectors).T, query, trans=1)


def sequential_sum(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sums in float32 taken one term after another (as a compiled loop adds them)."""
    if values.shape[axis] == 0:
        return np.zeros(np.delete(values.shape, axis), np.float32)
    return np.take(np.cumsum(values, axis=axis, dtype=np.float32), -1, axis=axis)


def smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """The min(k, n) smallest keys, sorted."""
    if keys.size > k:
        keys = np.partition(keys, k - 1)[:k]
    return np.sort(keys)


def unpack(keys: np.ndarray, k: int, finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(items int64, scores float32) of up to k sorted keys, padded to k. With `finite`, an entry
    whose score is not finite becomes a pad in its place, as compiled.unpack_keys makes it (the
    item_based and blend kernels keep what they summed)."""
    items = np.full(k, -1, np.int64)
    scores = np.full(k, -np.inf, np.float32)
    got_items, got = unpack_keys(keys)
    ok = np.isfinite(got) if finite else np.ones(keys.size, bool)
    items[:keys.size] = np.where(ok, got_items, -1)
    scores[:keys.size] = np.where(ok, got, np.float32(-np.inf))
    return items, scores


def item_positions(exclude, item_idx: np.ndarray, rows: int) -> np.ndarray:
    """item -> its index position (-1: not indexed), for the items of `exclude` (rows x items CSR)."""
    if exclude.shape[0] != rows:
        raise ValueError(f"exclude has {exclude.shape[0]} rows for {rows} queries")
    position = np.full(max(int(item_idx.max(initial=-1)) + 1, exclude.shape[1]), -1, np.int64)
    position[item_idx] = np.arange(item_idx.size)
    return position


def exclusion_lists(exclude, item_idx: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """compiled.exclusion_lists: (indptr, index positions) of each row's excluded items, sorted."""
    if exclude is None:
        return np.zeros(rows + 1, np.int64), np.zeros(0, np.int64)
    position = item_positions(exclude, item_idx, rows)
    row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(exclude.indptr))
    items = exclude.indices.astype(np.int64)
    pos = np.where((items >= 0) & (items < position.size), position[np.clip(items, 0, position.size - 1)], -1)
    keep = pos >= 0
    row, pos = row[keep], pos[keep]
    order = np.lexsort((pos, row))
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=rows), out=indptr[1:])
    return indptr, pos[order]


def best(scores: np.ndarray, item_idx: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """The k smallest keys (sorted) of the positions of `scores` (their items: item_idx) that are
    not excluded (sorted positions) and not NaN, as the compiled kernels offer them to a row."""
    ok = ~np.isnan(scores)
    ok[excluded] = False
    pos = np.flatnonzero(ok)
    if pos.size > k:  # only scores that reach the k-th largest can be among the k smallest keys
        cut = np.partition(scores[pos], pos.size - k)[pos.size - k]
        pos = pos[scores[pos] >= cut]
    return smallest(pack(scores[pos], item_idx[pos]), k)


def _one_query(k: int, n: int, rows: int, answer) -> tuple[np.ndarray, np.ndarray]:
    """Run answer(b) -> sorted keys for each row b, unpacked to (items, scores) rows x k."""
    items = np.full((rows, max(k, 0)), -1, np.int64)
    scores = np.full((rows, max(k, 0)), -np.inf, np.float32)
    if min(k, n) <= 0:
        return items, scores
    with single_threaded_blas():
        for b in range(rows):
            items[b], scores[b] = unpack(answer(b), k)
    return items, scores


def exact_search(queries: np.ndarray, vectors: np.ndarray, item_idx: np.ndarray, k: int, ex_indptr: np.ndarray,
                 ex_pos: np.ndarray, bounds: np.ndarray | None = None, threads: int = 1,
                 chunk: int = 2048, product_kind: str = "numba", tile_queries: int = 0,
                 tile_items: int = TILE_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """compiled.exact_search for each query as a batch of one: every item tile's products, no
    early stop (it only skips what cannot make the top k). Takes the compiled driver's arguments;
    bounds, threads, chunk, product_kind and tile_queries do not apply to one query at a time."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(vectors)

    def answer(b: int) -> np.ndarray:
        scores = np.concatenate([product(q[b], vectors[i0:i0 + tile_items]) for i0 in range(0, n, tile_items)])
        return best(scores, item_idx, ex_pos[ex_indptr[b]:ex_indptr[b + 1]], min(k, n))

    return _one_query(k, n, len(q), answer)


def ivf_search(queries: np.ndarray, probes: np.ndarray, offsets: np.ndarray, vectors: np.ndarray,
               item_idx: np.ndarray, k: int, ex_indptr: np.ndarray, ex_pos: np.ndarray,
               bounds: np.ndarray | None = None, threads: int = 1, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """compiled.ivf_search for each query as a batch of one: the top k of its probed cells' items."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    offsets = offsets.astype(np.int64)

    def answer(b: int) -> np.ndarray:
        cells = [(offsets[c], offsets[c + 1]) for c in probes[b] if c >= 0 and offsets[c + 1] > offsets[c]]
        if not cells:
            return np.zeros(0, np.uint64)
        pos = np.concatenate([np.arange(lo, hi) for lo, hi in cells])
        scores = np.concatenate([product(q[b], vectors[lo:hi]) for lo, hi in cells])
        excluded = np.flatnonzero(np.isin(pos, ex_pos[ex_indptr[b]:ex_indptr[b + 1]]))
        return best(scores, item_idx[pos], excluded, min(k, len(vectors)))

    return _one_query(k, len(vectors), len(q), answer)


def probe_cells(queries: np.ndarray, centroids: np.ndarray, nprobe: int, threads: int = 1,
                chunk: int = 8192) -> np.ndarray:
    """compiled.nearest_cells: each query's nprobe nearest cells by FAISS's L2 distance of the
    unit query (augmented by 0) to the centroids, nearest first, ties by cell."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    nlist, f = centroids.shape[0], q.shape[1]
    p = min(nprobe, nlist)
    out = np.full((len(q), max(nprobe, 0)), -1, np.int64)
    if p <= 0:
        return out
    head = np.ascontiguousarray(centroids[:, :f])
    cnorm = sequential_sum(centroids * centroids, axis=1)
    with single_threaded_blas():
        for b in range(len(q)):
            scale = np.float32(1.0) / max(np.sqrt(sequential_sum(q[b] * q[b])), np.float32(1e-12))
            unit = q[b] * scale
            dist = sequential_sum(unit * unit) + cnorm - np.float32(2.0) * product(unit, head)
            bits = dist.view(np.uint32)
            ascending = np.where(bits & np.uint32(0x8000_0000), ~bits, bits ^ np.uint32(0x8000_0000))
            keys = (ascending.astype(np.uint64) << np.uint64(32)) | np.arange(nlist, dtype=np.uint64)
            out[b, :p] = (smallest(keys, p) & np.uint64(0xFFFF_FFFF)).astype(np.int64)
    return out


def item_based(neighbours: np.ndarray, similarity: np.ndarray, recent: np.ndarray, seen, allowed: np.ndarray,
               k: int, threads: int = 1, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """compiled.item_based_top_k: summed similarity (float64, in (recent, neighbour) order) of
    the unseen allowed neighbours of each user's recent items."""
    rows = len(recent)
    items = np.full((rows, max(k, 0)), -1, np.int64)
    scores = np.full((rows, max(k, 0)), -np.inf, np.float32)
    if k <= 0:
        return items, scores
    for b in range(rows):
        mine = recent[b][recent[b] >= 0]
        near = neighbours[mine].ravel().astype(np.int64)
        sim = similarity[mine].ravel().astype(np.float64)
        ok = (near >= 0) & (sim > 0)
        ok[ok] &= allowed[near[ok]]
        ok[ok] &= ~np.isin(near[ok], seen.indices[seen.indptr[b]:seen.indptr[b + 1]])
        touched, inverse = np.unique(near[ok], return_inverse=True)
        totals = np.bincount(inverse, weights=sim[ok], minlength=touched.size)  # added in order
        keys = smallest(pack(totals.astype(np.float32) + np.float32(0.0), touched), k)
        items[b], scores[b] = unpack(keys, k, finite=False)
    return items, scores


def ease(weights: np.ndarray, items: np.ndarray, seen, k: int, threads: int = 1,
         chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """compiled.ease: each user's k best unseen modelled items by the float32 sum of the weight
    rows of what they saw, added in ascending position from zero."""
    items = np.asarray(items, dtype=np.int64)
    ex_indptr, ex_pos = exclusion_lists(seen, items, seen.shape[0])
    m = len(items)

    def answer(b: int) -> np.ndarray:
        ex = ex_pos[ex_indptr[b]:ex_indptr[b + 1]]
        row = np.zeros(m, np.float32)
        for p in ex:
            row += weights[p]
        return best(row, items, ex, min(k, m))

    return _one_query(k, m, seen.shape[0], answer)


def fuse(items: np.ndarray, contrib: np.ndarray, code: np.ndarray, n_lists: int, n_items: int | None, k: int,
         threads: int = 1, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """compiled.fuse_top_k with sorts: an item's total is the float64 sum of its contributions
    largest first (ties in column order), its code the largest contributor's."""
    contrib = np.where(items >= 0, np.broadcast_to(np.asarray(contrib, np.float64), items.shape), 0.0)
    code = np.broadcast_to(np.asarray(code, np.int8), items.shape)
    lead = np.argsort(-contrib, axis=1, kind="stable")  # each item's run starts with its largest
    items, contrib, code = (np.take_along_axis(a, lead, 1) for a in (items, contrib, code))
    items, totals, order = sum_repeats(items, contrib)
    code = np.where(items >= 0, np.take_along_axis(code, order, 1), -1).astype(np.int8)
    out_items, out_scores, out_code = best_per_row(items, totals, k, code)
    return out_items, out_scores + np.float32(0.0), np.where(out_items >= 0, out_code, -1).astype(np.int8)
