"""Compiled (numba) kernels for the candidate search: exact and IVF top-k by inner product, the
item_based aggregation, the EASE scores and the co-occurrence item-kNN.

Kernels (pure functions of numpy arrays, `nogil`, no state but numba's on-disk cache):
- exact_top_k_keys / exact_top_k: BLAS tiles of queries x items, each row's running top-k kept in
  compiled code (a buffer of packed keys cut back by quickselect), excluded positions skipped, and
  a row stopped once no further item can reach its k-th best (items in descending norm order,
  Cauchy-Schwarz bound: `norm_bounds`);
- ivf_top_k_keys: the same over each query's probed cells, grouped by cell (one BLAS product per
  cell and query tile), a (query, cell) pair skipped when the cell's largest norm cannot reach
  the query's k-th best (`cell_bounds`); nearest_cells picks the probes from a plain centroid array;
- item_based_top_k: summed similarity over the neighbours of each user's recent items;
- ease_top_k_keys: summed EASE weight rows of each user's modelled items, cut to the top-k by a
  threshold guessed from a sample of the scores;
- latest_items: each user's most recent distinct items (item_based's input); first_pairs: the
  distinct (user, item) pairs with their latest time (the popularity rankings' input);
- fusion_table / hits_at_k: choosing the blend on the holdout (recall.evaluate.choose);
- cooccurrence_top_n (+ cap_rows): item-kNN from co-occurrence, equal to implicit's BM25 /
  cosine recommenders (recall.model.itemknn), optionally with each user's items capped.
Thread drivers (exact_search, ivf_search, probe_cells, item_based, ease, item_knn) split the rows into
fixed chunks and run the kernels on a thread pool with BLAS pinned to one thread.

Order of results everywhere: score descending, ties by item index ascending, as the packed keys of
`recall.kernel.keys.pack` order them (so -0.0 ranks just below +0.0, as today's search does); pads are
item -1 with score -inf.

One file on purpose: numba's on-disk cache of a kernel is invalidated by its own source file only,
so kernels that inline one another (the packed keys, the running top-k) must share a file, or an
edit to one would leave the others' cached machine code stale.

recall.kernel.plain gives the same results as these for a batch of one user, in NumPy (a server's
fold-in runs it and never loads numba); tests/test_plain.py holds the two together.

Determinism: a row's result depends only on its inputs and on which rows share its chunk, never
on the thread count. Selection is exact: the kept set is the k smallest keys whatever the order
they arrive in. The only thing a chunk changes is float32 rounding of a BLAS product (OpenBLAS
rounds a dot product differently with the shape of the call): fixed chunks keep it fixed.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from recall.kernel.plain import TILE_ITEMS, item_positions  # TILE_ITEMS: the plain kernels' tiles too
from recall.kernel.pool import in_chunks


def _jit(**options):
    """numba.njit with nogil and numba's on-disk cache (every CLI run is a new process): kept in
    __pycache__ beside this file, else in the user's cache folder, or NUMBA_CACHE_DIR when set.
    Where none of those can be written numba refuses cache=True outright; the kernels are then
    compiled in memory in each process instead (correct, only slower to start)."""
    def wrap(fn):
        try:
            return njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            if "cannot cache" not in str(exc):
                raise
            _warn_uncached(str(exc))
            return njit(cache=False, nogil=True, **options)(fn)
    return wrap


_WARNED: list[str] = []


def _warn_uncached(reason: str) -> None:
    if not _WARNED:
        import warnings

        _WARNED.append(reason)
        warnings.warn(f"recall.compiled: no writable numba cache folder ({reason}); compiling in memory. "
                      "Set NUMBA_CACHE_DIR to a writable folder to keep compiled kernels between runs.",
                      RuntimeWarning, stacklevel=3)


PAD = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
TILE_QUERIES = 256  # exact: queries scored together (their block of scores stays in L2)
IVF_TILE_QUERIES = 4096  # ivf: queries whose probes are grouped by cell
IVF_BUFFER = 4  # ivf: a row's buffer holds 4k keys (most probed items pass while it fills)
EASE_SAMPLE_STRIDE = 8  # ease: every 8th score guesses a row's threshold
CHUNK = 32  # scores checked against the threshold at once before any is looked at alone

# --- packed keys -------------------------------------------------------------------------
# key = (score bits mapped to descending uint32) << 32 | item: ascending keys = best first.


@_jit(inline="always")
def _key(bits, item):
    """The packed key of a float32's raw bits (uint32) and an item index (as recall.index.pack)."""
    b = np.uint64(bits)
    if b & np.uint64(0x8000_0000):
        desc = b
    else:
        desc = b ^ np.uint64(0x7FFF_FFFF)
    return (desc << np.uint64(32)) | np.uint64(np.uint32(item))


@_jit(inline="always")
def _key_bits(key):
    """The float32 bits (uint32) held in a key."""
    desc = key >> np.uint64(32)
    if desc & np.uint64(0x8000_0000):
        return np.uint32(desc)
    return np.uint32(desc ^ np.uint64(0x7FFF_FFFF))


@_jit()
def _unpack_rows(keys, items, scores):
    """Sorted keys -> items (-1 pads) and scores (-inf pads); non-finite scores count as pads."""
    bits = scores.view(np.uint32)
    for r in range(keys.shape[0]):
        for j in range(keys.shape[1]):
            key = keys[r, j]
            low = np.int64(key & np.uint64(0xFFFF_FFFF))
            b = _key_bits(key)
            if key == PAD or (b & np.uint32(0x7F80_0000)) == np.uint32(0x7F80_0000):  # pad, inf or nan
                items[r, j] = -1
                scores[r, j] = -np.inf
            else:
                items[r, j] = low
                bits[r, j] = b


# --- a running top-k per row: a buffer of keys and the threshold to beat ---------------------
# Keys that beat a row's threshold are appended to its buffer (2k wide); a full buffer is cut back
# to its k smallest keys by quickselect, and the k-th becomes the new threshold. Appending costs
# far less than a heap insert, and the kept set is the k smallest keys whatever the order they came.


@_jit()
def _select(a, n, k):
    """Rearrange a[:n] so that a[:k] are its k smallest and a[k - 1] the largest of them: quickselect with a branch-free partition (every element swapped, the split advanced
    by the comparison), which costs a third of a branching one on unpredictable keys."""
    lo, hi, target = 0, n, k - 1
    while hi - lo > 24:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))  # median of three: lo < split < hi for distinct keys
        split = lo
        for i in range(lo, hi):
            v = a[i]
            a[i] = a[split]
            a[split] = v
            split += v < pivot
        if split == lo:  # repeated keys (not in the kernels' own use): the pivot's copies go first
            for i in range(lo, hi):
                v = a[i]
                a[i] = a[split]
                a[split] = v
                split += v == pivot
            if target < split:
                return
        if target < split:
            hi = split
        else:
            lo = split
    _insertion_sort(a, lo, hi)


@_jit(inline="always")
def _insertion_sort(a, lo, hi):
    for i in range(lo + 1, hi):
        v = a[i]
        j = i
        while j > lo and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


@_jit()
def _sort(a, n, tmp):
    """Sort a[:n] ascending (tmp: scratch of at least n): runs of 8 by insertion, then merged
    with a branch-free merge (twice as fast as np.sort on a hundred keys)."""
    run = 8
    for lo in range(0, n, run):
        _insertion_sort(a, lo, min(lo + run, n))
    src, dst = a, tmp
    width = run
    flips = 0
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, o = lo, mid, lo
            while i < mid and j < hi:
                x = src[i]
                y = src[j]
                right = y < x
                dst[o] = y if right else x
                j += right
                i += 1 - right
                o += 1
            while i < mid:
                dst[o] = src[i]
                i += 1
                o += 1
            while j < hi:
                dst[o] = src[j]
                j += 1
                o += 1
        src, dst = dst, src
        flips += 1
        width *= 2
    if flips % 2 == 1:
        a[:n] = tmp[:n]


@_jit(inline="always")
def _bits_to_float(bits, one, one_bits):
    one_bits[0] = bits
    return one[0]


@_jit(inline="always")
def _row_threshold(limit, one, one_bits):
    if limit == PAD:
        return np.float32(-np.inf)
    return _bits_to_float(_key_bits(limit), one, one_bits)


@_jit(inline="always")
def _seek(ex_pos, e, e1, pos):
    """The first index in ex_pos[e:e1] (sorted) whose value is >= pos."""
    if e1 - e > 16:
        return e + np.searchsorted(ex_pos[e:e1], pos)
    while e < e1 and ex_pos[e] < pos:
        e += 1
    return e


@_jit(inline="always")
def _chunk_below(block, a, c0, c1, thr):
    """Whether block[a, c0:c1], a full CHUNK, holds no score reaching thr (False for a shorter tail)."""
    if c1 - c0 != CHUNK:
        return False
    chunk = block[a, c0:c1]  # a full slice: LLVM vectorises the count below
    hits = 0
    for j in range(CHUNK):
        hits += chunk[j] >= thr
    return hits == 0


@_jit()
def _scan(block, bits, a, w, lo, item_idx, bufs, r, counts, limits, k, ex_pos, e, e1, one, one_bits):
    """Offer block[a, :w] (index positions lo...) to row r's buffer, excluded positions skipped.

    limits[r, 0] is the row's threshold key (PAD until the buffer first fills); its score is the
    threshold, and scores below it are passed over CHUNK at a time (a vectorised count). Inlined
    with 2-D indexing: a call per row with array views cost more than small blocks' scores.
    Returns the exclusion cursor."""
    cnt = counts[r]
    limit = limits[r, 0]
    width = bufs.shape[1]
    thr = _row_threshold(limit, one, one_bits)
    for c0 in range(0, w, CHUNK):
        c1 = min(c0 + CHUNK, w)
        if _chunk_below(block, a, c0, c1, thr):
            continue
        for j in range(c0, c1):
            if block[a, j] >= thr:
                pos = lo + j
                while e < e1 and ex_pos[e] < pos:
                    e += 1
                if e < e1 and ex_pos[e] == pos:
                    continue
                key = _key(bits[a, j], item_idx[pos])
                if key < limit:
                    bufs[r, cnt] = key
                    cnt += 1
                    if cnt == width:
                        _select(bufs[r], cnt, k)
                        cnt = k
                        limit = bufs[r, k - 1]
                        thr = _row_threshold(limit, one, one_bits)
    counts[r] = cnt
    limits[r, 0] = limit
    return e


@_jit()
def _smallest(a, n, k, tmp):
    """Sort the min(k, n) smallest keys of a[:n] into a[:min(k, n)] and return that count."""
    kk = min(k, n)
    if n > kk:
        _select(a, n, kk)
    _sort(a, kk, tmp)
    return kk


@_jit()
def _finish(buf, cnt, k, out, tmp):
    """A row's k best keys, sorted, PAD after the last."""
    cnt = _smallest(buf, cnt, k, tmp)
    out[:cnt] = buf[:cnt]
    out[cnt:] = PAD


# --- exact search ----------------------------------------------------------------------------


@_jit()
def norm_bounds(vectors):
    """bounds[i] = the largest L2 norm among vectors[i:] (float64, bounds[n] = 0): no item at a
    position >= i can score above |q| * bounds[i] (Cauchy-Schwarz)."""
    n, f = vectors.shape
    out = np.zeros(n + 1, np.float64)
    for i in range(n - 1, -1, -1):
        s = 0.0
        for d in range(f):
            s += np.float64(vectors[i, d]) ** 2
        out[i] = max(out[i + 1], math.sqrt(s))
    return out


# a computed float32 product exceeds the exact one by at most f * 2^-24 of |q||v| (f terms):
# 1e-3 covers f up to ~16000, so a row stops only when no remaining item can reach its threshold
BOUND_MARGIN = 1.0 + 1e-3


@_jit()
def exact_state(rows, k, width=2):
    """Per-row working arrays of the search for a tile of `rows` queries and k >= 1 (each row's
    buffer holds width * k keys)."""
    return (np.empty((rows, width * k), np.uint64), np.zeros(rows, np.int64), np.empty((rows, 1), np.uint64),
            np.empty(rows, np.int64), np.empty(rows, np.float64), np.empty(rows, np.int64))


@_jit()
def exact_begin(queries, q0, ex_indptr, state):
    """Reset the state for the queries[q0:q0 + rows] tile; returns the active row list and count."""
    bufs, counts, limits, cursor, qnorm, active = state
    m = min(active.shape[0], queries.shape[0] - q0)
    for r in range(m):
        counts[r] = 0
        limits[r, 0] = PAD
        cursor[r] = ex_indptr[q0 + r]
        s = 0.0
        for d in range(queries.shape[1]):
            s += np.float64(queries[q0 + r, d]) ** 2
        qnorm[r] = math.sqrt(s)
        active[r] = r
    return m


@_jit()
def exact_offer_block(block, i0, item_idx, q0, ex_indptr, ex_pos, k, bound_next, state, m):
    """Offer a block of scores (row a = active query active[a], columns = positions i0...) to the
    rows' top-k; rows that no later item can improve (|q| * bound_next below their k-th best) stop.
    Returns the new number of active rows (active[:m] compacted in order)."""
    bufs, counts, limits, cursor, qnorm, active = state
    one = np.empty(1, np.float32)
    one_bits = one.view(np.uint32)
    bits = block.view(np.uint32)
    kept = 0
    for a in range(m):
        r = active[a]
        cursor[r] = _scan(block, bits, a, block.shape[1], i0, item_idx, bufs, r, counts, limits, k, ex_pos, cursor[r],
                          ex_indptr[q0 + r + 1], one, one_bits)
        if limits[r, 0] != PAD:
            thr = _bits_to_float(_key_bits(limits[r, 0]), one, one_bits)
            if qnorm[r] * bound_next * BOUND_MARGIN < thr:
                continue  # done: nothing further can reach the threshold
        active[kept] = r
        kept += 1
    return kept


@_jit()
def exact_end(state, k, rows, keys_out):
    bufs, counts = state[0], state[1]
    tmp = np.empty(bufs.shape[1], np.uint64)
    for r in range(rows):
        _finish(bufs[r], counts[r], k, keys_out[r], tmp)


@_jit()
def exact_top_k_keys(queries, vectors, item_idx, k, ex_indptr, ex_pos, bounds, tile_queries=TILE_QUERIES,
                     tile_items=TILE_ITEMS):
    """Packed keys (B x k, ascending = best first, PAD where fewer) of each query's top-k items.

    queries B x f and vectors n x f: C-contiguous float32; item_idx: position -> item (int64);
    ex_indptr (B + 1) / ex_pos: the positions each query may not get, sorted within a row
    (ex_pos[ex_indptr[b]:ex_indptr[b + 1]]); bounds: norm_bounds(vectors). Scores are BLAS
    products (np.dot -> sgemm) of the still active queries of a tile against a tile of items; a
    query stops once no further item can reach its k-th best (items in descending norm make that
    early).
    """
    b_total, f = queries.shape
    n = vectors.shape[0]
    keys = np.full((b_total, k), PAD, np.uint64)
    kk = min(k, n)
    if kk <= 0 or b_total == 0:
        return keys
    tq = min(tile_queries, b_total)
    flat = np.empty(tq * tile_items, np.float32)
    qbuf = np.empty((tq, f), np.float32)
    state = exact_state(tq, kk)
    active = state[5]
    for q0 in range(0, b_total, tq):
        m = exact_begin(queries, q0, ex_indptr, state)
        rows = m
        for i0 in range(0, n, tile_items):
            if m == 0:
                break
            i1 = min(i0 + tile_items, n)
            w = i1 - i0
            for a in range(m):
                qbuf[a] = queries[q0 + active[a]]
            block = flat[:m * w].reshape(m, w)
            np.dot(qbuf[:m], vectors[i0:i1].T, block)
            m = exact_offer_block(block, i0, item_idx, q0, ex_indptr, ex_pos, kk, bounds[i1], state, m)
        exact_end(state, kk, rows, keys[q0:q0 + rows])
    return keys


@_jit()
def unpack_keys(keys):
    """(items int64 with -1 pads, scores float32 with -inf pads) of B x k packed keys."""
    items = np.empty(keys.shape, np.int64)
    scores = np.empty(keys.shape, np.float32)
    _unpack_rows(keys, items, scores)
    return items, scores


@_jit()
def exact_top_k(queries, vectors, item_idx, k, ex_indptr, ex_pos, bounds, tile_queries=TILE_QUERIES,
                tile_items=TILE_ITEMS):
    """Each query's top-k (items int64 B x k, scores float32 B x k) by inner product over all
    items, excluded positions skipped; -1 / -inf pads where fewer than k remain."""
    return unpack_keys(exact_top_k_keys(queries, vectors, item_idx, k, ex_indptr, ex_pos, bounds,
                                        tile_queries, tile_items))


@_jit()
def excluded_positions(indptr, indices, position):
    """Per row of a CSR matrix of item indices (indptr, indices), the index positions of its items
    (position: item -> position, -1 where the item is not indexed), sorted; as (indptr, positions)."""
    rows = indptr.shape[0] - 1
    out_ptr = np.zeros(rows + 1, np.int64)
    out = np.empty(indptr[rows] - indptr[0], np.int64)
    at = 0
    for r in range(rows):
        start = at
        for e in range(indptr[r], indptr[r + 1]):
            item = indices[e]
            if 0 <= item < position.shape[0]:
                p = position[item]
                if p >= 0:
                    out[at] = p
                    at += 1
        out[start:at].sort()
        out_ptr[r + 1] = at
    return out_ptr, out[:at]


# --- IVF (approximate) search ----------------------------------------------------------------


@_jit()
def cell_bounds(vectors, offsets):
    """The largest L2 norm (float64) of each cell's vectors; 0 for an empty cell."""
    nlist = offsets.shape[0] - 1
    out = np.zeros(nlist, np.float64)
    for c in range(nlist):
        best = 0.0
        for i in range(offsets[c], offsets[c + 1]):
            s = 0.0
            for d in range(vectors.shape[1]):
                s += np.float64(vectors[i, d]) ** 2
            best = max(best, math.sqrt(s))
        out[c] = best
    return out


@_jit()
def ivf_top_k_keys(queries, probes, offsets, vectors, item_idx, k, ex_indptr, ex_pos, bounds,
                   tile_queries=IVF_TILE_QUERIES, near=1):
    """Packed keys (B x k) of each query's top-k among the items of its probed cells.

    probes: B x nprobe cell numbers, nearest first, -1 pads; cell c holds index positions
    offsets[c]:offsets[c + 1] of vectors / item_idx (cell-ordered); bounds: cell_bounds(...).
    The result is the exact top-k of the union of a query's probed cells (excluded positions
    skipped), whatever order they are scanned in: queries are taken a tile at a time, their probes
    in passes of growing rank (the nearest cell first, so thresholds rise early), each pass grouped
    by cell so a cell is one BLAS product against all the queries of the tile that probe it. A
    (query, cell) pair is skipped when |q| * the cell's largest norm is below the query's k-th best.
    """
    b_total, f = queries.shape
    nlist = offsets.shape[0] - 1
    nprobe = probes.shape[1]
    n = vectors.shape[0]
    keys = np.full((b_total, k), PAD, np.uint64)
    kk = min(k, n)
    if kk <= 0 or b_total == 0 or nprobe == 0:
        return keys
    tq = min(tile_queries, b_total)
    widest = 0
    for c in range(nlist):
        widest = max(widest, offsets[c + 1] - offsets[c])
    flat = np.empty(tq * max(widest, 1), np.float32)
    qbuf = np.empty((tq, f), np.float32)
    state = exact_state(tq, kk, IVF_BUFFER)
    bufs, counts, limits, cursor, qnorm, _ = state
    width = bufs.shape[1]
    cell_start = np.empty(nlist + 1, np.int64)
    cell_fill = np.empty(nlist, np.int64)
    pair_query = np.empty(tq * nprobe, np.int64)
    rows = np.empty(tq, np.int64)
    one = np.empty(1, np.float32)
    one_bits = one.view(np.uint32)
    for q0 in range(0, b_total, tq):
        m_tile = exact_begin(queries, q0, ex_indptr, state)
        for step in range(2):  # passes over probe ranks [0, near), then [near, nprobe)
            r0 = 0 if step == 0 else min(near, nprobe)
            r1 = min(near, nprobe) if step == 0 else nprobe
            if r1 <= r0:
                continue
            cell_start[:] = 0
            for r in range(m_tile):
                for j in range(r0, r1):
                    c = probes[q0 + r, j]
                    if c >= 0:
                        cell_start[c + 1] += 1
            for c in range(nlist):
                cell_start[c + 1] += cell_start[c]
            cell_fill[:] = cell_start[:nlist]
            for r in range(m_tile):
                for j in range(r0, r1):
                    c = probes[q0 + r, j]
                    if c >= 0:
                        pair_query[cell_fill[c]] = r
                        cell_fill[c] += 1
            for c in range(nlist):
                lo, hi = offsets[c], offsets[c + 1]
                if hi == lo or cell_start[c + 1] == cell_start[c]:
                    continue
                m = 0
                for p in range(cell_start[c], cell_start[c + 1]):
                    r = pair_query[p]
                    if qnorm[r] * bounds[c] * BOUND_MARGIN < _row_threshold(limits[r, 0], one, one_bits):
                        continue  # nothing in this cell can reach the row's k-th best
                    rows[m] = r
                    qbuf[m] = queries[q0 + r]
                    m += 1
                if m == 0:
                    continue
                w = hi - lo
                block = flat[:m * w].reshape(m, w)
                np.dot(qbuf[:m], vectors[lo:hi].T, block)
                bits = block.view(np.uint32)
                for a in range(m):
                    r = rows[a]
                    e0, e1 = ex_indptr[q0 + r], ex_indptr[q0 + r + 1]
                    e = _seek(ex_pos, e0, e1, lo)
                    # _scan's loop without its CHUNK pre-count: a cell's blocks are short, and
                    # calling _scan here measured 1.05 s against 0.79-0.91 s (40k queries, 447 cells)
                    cnt = counts[r]
                    limit = limits[r, 0]
                    thr = _row_threshold(limit, one, one_bits)
                    for j in range(w):
                        if block[a, j] >= thr:
                            pos = lo + j
                            while e < e1 and ex_pos[e] < pos:
                                e += 1
                            if e < e1 and ex_pos[e] == pos:
                                continue
                            key = _key(bits[a, j], item_idx[pos])
                            if key < limit:
                                bufs[r, cnt] = key
                                cnt += 1
                                if cnt == width:
                                    _select(bufs[r], cnt, kk)
                                    cnt = kk
                                    limit = bufs[r, kk - 1]
                                    thr = _row_threshold(limit, one, one_bits)
                    counts[r] = cnt
                    limits[r, 0] = limit
        exact_end(state, kk, m_tile, keys[q0:q0 + m_tile])
    return keys


@_jit()
def nearest_cells(queries, centroids, nprobe, tile_queries=1024):
    """Each query's `nprobe` nearest cells (B x nprobe int64, nearest first, ties by cell number),
    as a FAISS IndexFlatL2 over the centroids answers for the query scaled to unit length and
    augmented with 0: centroids are nlist x (f + 1) in the augmented space of the IVF build.
    Distances are |u|^2 + |c|^2 - 2 u.c in float32 with u.c from BLAS, as FAISS computes them."""
    b_total, f = queries.shape
    nlist = centroids.shape[0]
    p = min(nprobe, nlist)
    out = np.full((b_total, nprobe), -1, np.int64)
    if p <= 0 or b_total == 0:
        return out
    head = np.ascontiguousarray(centroids[:, :f])
    cnorm = np.empty(nlist, np.float32)
    for c in range(nlist):
        s = np.float32(0.0)
        for d in range(centroids.shape[1]):
            s += centroids[c, d] * centroids[c, d]
        cnorm[c] = s
    tq = min(tile_queries, b_total)
    unit = np.empty((tq, f), np.float32)
    unorm = np.empty(tq, np.float32)
    ip = np.empty((tq, nlist), np.float32)
    dist = np.empty(nlist, np.float32)
    dbits = dist.view(np.uint32)
    best = np.empty(p, np.uint64)
    for q0 in range(0, b_total, tq):
        m = min(tq, b_total - q0)
        for r in range(m):
            s = np.float32(0.0)
            for d in range(f):
                s += queries[q0 + r, d] * queries[q0 + r, d]
            scale = np.float32(1.0) / max(np.sqrt(s), np.float32(1e-12))
            s = np.float32(0.0)
            for d in range(f):
                unit[r, d] = queries[q0 + r, d] * scale
                s += unit[r, d] * unit[r, d]
            unorm[r] = s
        block = ip[:m]
        np.dot(unit[:m], head.T, block)
        for r in range(m):
            for c in range(nlist):
                dist[c] = unorm[r] + cnorm[c] - np.float32(2.0) * block[r, c]
            size = 0
            for c in range(nlist):
                b = np.uint64(dbits[c])
                asc = (b ^ np.uint64(0xFFFF_FFFF)) if b & np.uint64(0x8000_0000) else (b ^ np.uint64(0x8000_0000))
                key = (asc << np.uint64(32)) | np.uint64(c)
                if size == p:
                    if key >= best[p - 1]:
                        continue
                    j = p - 1
                else:
                    j = size
                    size += 1
                while j > 0 and best[j - 1] > key:
                    best[j] = best[j - 1]
                    j -= 1
                best[j] = key
            for j in range(p):
                out[q0 + r, j] = np.int64(best[j] & np.uint64(0xFFFF_FFFF))
    return out


# --- item_based: summed similarity of the neighbours of a user's recent items ------------------


@_jit()
def item_based_top_k(neighbours, similarity, recent, seen_indptr, seen_indices, allowed, k):
    """Each user's top-k unseen allowed items by summed similarity over its recent items' neighbours.

    neighbours / similarity: n_items x N (int64 with -1 pads / float32); recent: B x R item
    indices (-1 pads); seen_indptr / seen_indices: the batch's seen CSR rows; allowed: bool per
    item. Neighbour entries that are pads, non-positive, blocked or seen are skipped; a user's
    total for an item is the float64 sum in (recent, neighbour) order, as recall.candidates'
    item_based sums it, then rounded to float32. Returns (items int64 B x k, scores float32 B x k)
    by score descending, ties by item ascending, -1 / -inf pads.
    """
    b_total, r_width = recent.shape
    n_items, width = neighbours.shape
    items = np.full((b_total, k), -1, np.int64)
    scores = np.full((b_total, k), -np.inf, np.float32)
    if k <= 0:
        return items, scores
    acc = np.zeros(n_items, np.float64)
    mark = np.full(n_items, -1, np.int64)  # == b: touched for user b
    seen = np.full(n_items, -1, np.int64)  # == b: seen by user b
    touched = np.empty(r_width * width, np.int64)
    keys = np.empty(max(r_width * width, 1), np.uint64)
    tmp = np.empty(max(r_width * width, 1), np.uint64)
    total = np.empty(1, np.float32)
    total_bits = total.view(np.uint32)
    for b in range(b_total):
        for e in range(seen_indptr[b], seen_indptr[b + 1]):
            seen[seen_indices[e]] = b
        nt = 0
        for r in range(r_width):
            it = recent[b, r]
            if it < 0:
                continue
            for j in range(width):
                nb = neighbours[it, j]
                if nb < 0:
                    continue
                s = np.float64(similarity[it, j])
                if not s > 0 or not allowed[nb] or seen[nb] == b:
                    continue
                if mark[nb] != b:
                    mark[nb] = b
                    acc[nb] = 0.0
                    touched[nt] = nb
                    nt += 1
                acc[nb] += s
        for t in range(nt):
            total[0] = np.float32(acc[touched[t]]) + np.float32(0.0)
            keys[t] = _key(total_bits[0], touched[t])
        kk = _smallest(keys, nt, k, tmp)
        for t in range(kk):
            items[b, t] = np.int64(keys[t] & np.uint64(0xFFFF_FFFF))
            total_bits[0] = _key_bits(keys[t])
            scores[b, t] = total[0]
    return items, scores


# --- weighted blend: reciprocal-rank fusion of per-source lists ---------------------------------


@_jit()
def fuse_top_k(items, contrib, code, n_lists, n_items, k):
    """Each row's k best items by summed contribution over the per-source lists side by side.

    items: B x W (the lists' columns one after the other, int64, -1 pads; each list unique per
    row); contrib: W float64, a column's contribution (its source's weight / (61 + rank)); code: W
    int8, its source's code. An item's total is the float64 sum of its contributions largest first
    (ties in column order) and its code the largest contributor's, exactly as recall.kernel.blend
    sums them with sorts; rounded to float32. Returns (items int64, scores float32, codes int8),
    B x k, by score descending, ties by item ascending, -1 / -inf / -1 pads.
    """
    b_total, width = items.shape
    out_items = np.full((b_total, k), -1, np.int64)
    out_scores = np.full((b_total, k), -np.inf, np.float32)
    out_code = np.full((b_total, k), -1, np.int8)
    if k <= 0:
        return out_items, out_scores, out_code
    mark = np.full(n_items, -1, np.int64)  # == b: item touched in row b, at slot[item]
    slot = np.empty(n_items, np.int64)
    touched = np.empty(width, np.int64)
    count = np.empty(width, np.int64)
    vals = np.empty((width, n_lists), np.float64)  # a slot's contributions, largest first
    codes = np.empty((width, n_lists), np.int8)
    keys = np.empty(max(width, 1), np.uint64)
    tmp = np.empty(max(width, 1), np.uint64)
    total = np.empty(1, np.float32)
    total_bits = total.view(np.uint32)
    for b in range(b_total):
        nt = 0
        for j in range(width):
            it = items[b, j]
            if it < 0:
                continue
            if mark[it] != b:
                mark[it] = b
                slot[it] = nt
                touched[nt] = it
                count[nt] = 0
                nt += 1
            s = slot[it]
            c = contrib[j]
            p = count[s]
            if p == n_lists:
                raise ValueError("a source's list repeats an item")
            while p > 0 and vals[s, p - 1] < c:  # after equal ones: ties stay in column order
                vals[s, p] = vals[s, p - 1]
                codes[s, p] = codes[s, p - 1]
                p -= 1
            vals[s, p] = c
            codes[s, p] = code[j]
            count[s] += 1
        for t in range(nt):
            acc = 0.0
            for q in range(count[t]):
                acc += vals[t, q]
            total[0] = np.float32(acc) + np.float32(0.0)
            keys[t] = _key(total_bits[0], touched[t])
        kk = _smallest(keys, nt, k, tmp)
        for t in range(kk):
            it = np.int64(keys[t] & np.uint64(0xFFFF_FFFF))
            out_items[b, t] = it
            total_bits[0] = _key_bits(keys[t])
            out_scores[b, t] = total[0]
            out_code[b, t] = codes[slot[it], 0]
    return out_items, out_scores, out_code


# --- ease: summed rows of the EASE weights over a user's modelled items ---------------------------


@_jit()
def ease_top_k_keys(weights, item_idx, k, ex_indptr, ex_pos, stride=EASE_SAMPLE_STRIDE):
    """Packed keys (B x k, ascending = best first, PAD where fewer) of each user's k best unseen
    modelled items by EASE score.

    weights: m x m float32 (row p: what modelled item p adds to every modelled item); item_idx:
    position -> item (int64, ascending); ex_indptr (B + 1) / ex_pos: each user's seen positions,
    sorted. A user's scores are the float32 sum of their seen rows added in ascending position
    from zero, as scipy's sparse x dense product adds them (so the same bits).

    Selection: a threshold is guessed from every `stride`-th score (low enough that about 2k
    scores reach it), the unseen items that reach it are collected and cut to the k best; when
    fewer than k unseen items reach it, every unseen item is collected instead, so the result is
    exact either way. A running top-k over all m scores costs five times more: a fifth of the
    scores would pass its early thresholds.
    """
    b_total = ex_indptr.shape[0] - 1
    m = weights.shape[0]
    keys = np.full((b_total, max(k, 0)), PAD, np.uint64)
    kk = min(k, m)
    if kk <= 0 or b_total == 0:
        return keys
    block = np.empty((1, m), np.float32)
    bits = block.view(np.uint32)
    row = block[0]  # summed through a 1-D view: LLVM vectorises that, not the 2-D indexing
    found = np.empty(m, np.uint64)
    tmp = np.empty(m, np.uint64)
    sample = np.empty((m + stride - 1) // stride, np.float32)
    rank = (2 * kk) // stride + 1  # the sample's rank-th largest: about 2k scores reach it
    for b in range(b_total):
        e0, e1 = ex_indptr[b], ex_indptr[b + 1]
        row[:] = 0.0
        for e in range(e0, e1):
            source = weights[ex_pos[e]]
            for j in range(m):
                row[j] += source[j]
        threshold = np.float32(-np.inf)
        if rank < sample.shape[0]:
            n = 0
            for j in range(0, m, stride):
                sample[n] = -row[j]
                n += 1
            _select(sample, n, rank)
            threshold = -sample[rank - 1]
        n = _collect(block, bits, threshold, item_idx, ex_pos, e0, e1, found)
        if n < kk:
            n = _collect(block, bits, np.float32(-np.inf), item_idx, ex_pos, e0, e1, found)
        _finish(found, n, kk, keys[b], tmp)
    return keys


@_jit()
def _collect(block, bits, threshold, item_idx, ex_pos, e, e1, found):
    """The keys of the positions of block[0] whose score reaches `threshold`, excluded positions
    (ex_pos[e:e1], sorted) skipped, into found; returns how many."""
    n = 0
    m = block.shape[1]
    for c0 in range(0, m, CHUNK):
        c1 = min(c0 + CHUNK, m)
        if _chunk_below(block, 0, c0, c1, threshold):
            continue
        for j in range(c0, c1):
            if block[0, j] >= threshold:
                while e < e1 and ex_pos[e] < j:
                    e += 1
                if e < e1 and ex_pos[e] == j:
                    continue
                found[n] = _key(bits[0, j], item_idx[j])
                n += 1
    return n


# --- each user's most recent distinct items ------------------------------------------------------


@_jit(inline="always")
def _later(t, item, t2, item2):
    """Whether (t, item) comes before (t2, item2): later first, ties by the lower item."""
    return t > t2 or (t == t2 and item < item2)


@_jit()
def latest_items(user_idx, item_idx, when, n_users, r):
    """Each user's r distinct items with the latest `when` (an item counts by its latest row),
    latest first, ties by item ascending; n_users x r int64, -1 pads. One pass over the rows in
    any order, each user's list kept sorted (r is a handful)."""
    items = np.full((n_users, r), -1, np.int64)
    if r <= 0:
        return items
    times = np.empty((n_users, r), when.dtype)
    size = np.zeros(n_users, np.int64)
    for e in range(user_idx.shape[0]):
        u = user_idx[e]
        it = np.int64(item_idx[e])
        t = when[e]
        n = size[u]
        j = n
        for z in range(n):
            if items[u, z] == it:
                j = z
                break
        if j < n:  # listed already: moves up when this row is later
            if not t > times[u, j]:
                continue
        elif n == r:  # a full list: displaces the last when it comes before it
            if not _later(t, it, times[u, r - 1], items[u, r - 1]):
                continue
            j = r - 1
        else:
            size[u] = n + 1
        while j > 0 and _later(t, it, times[u, j - 1], items[u, j - 1]):
            items[u, j] = items[u, j - 1]
            times[u, j] = times[u, j - 1]
            j -= 1
        items[u, j] = it
        times[u, j] = t
    return items


@_jit()
def first_pairs(user_idx, item_idx, when, n_users, n_items):
    """The rows where each distinct (user, item) pair first appears, in row order, and each
    pair's latest `when` (when: one per row, or empty for none): what a pandas groupby of the
    pairs without sorting gives. Rows are grouped by user by a counting sort, O(rows)."""
    n = user_idx.shape[0]
    start = np.zeros(n_users + 1, np.int64)
    for e in range(n):
        start[user_idx[e] + 1] += 1
    for u in range(n_users):
        start[u + 1] += start[u]
    rows = np.empty(n, np.int64)
    fill = start[:n_users].copy()
    for e in range(n):
        u = user_idx[e]
        rows[fill[u]] = e
        fill[u] += 1
    timed = when.shape[0] == n and n > 0
    stamp = np.full(n_items, -1, np.int64)
    first_row = np.empty(n_items, np.int64)  # of the item's pair with the current user
    first = np.zeros(n, np.bool_)
    latest = np.empty(n if timed else 0, when.dtype)  # at each pair's first row
    for u in range(n_users):
        for q in range(start[u], start[u + 1]):
            e = rows[q]
            it = item_idx[e]
            if stamp[it] != u:
                stamp[it] = u
                first_row[it] = e
                first[e] = True
                if timed:
                    latest[e] = when[e]
            elif timed and when[e] > latest[first_row[it]]:
                latest[first_row[it]] = when[e]
    pairs = np.flatnonzero(first)
    return pairs, latest[pairs] if timed else latest


# --- choosing the blend: the sources' lists side by side, and a blend's hits in its top-k --------


@_jit()
def fusion_table(items, source, rank, n_lists, offset, relevant_keys, n_items):
    """Per row, the union of the sources' lists as candidate slots (recall.evaluate.choose.Fusion).

    items: B x W, the lists' columns side by side (int64, -1 pads); source / rank: W, a column's
    list and rank in it; relevant_keys: sorted row * n_items + item of the held-out pairs. A row's
    slots are its distinct values in ascending order, pads (-1) first when it has any (as a stable
    sort of the row numbers them), width the most any row has. Returns contrib (B x width x
    n_lists float32: 1 / (offset + 1 + rank) where a list holds the slot's item), cand (B x width
    int64: the slot's item, -1 for pads) and hit (B x width bool: a relevant pair)."""
    b_total, w = items.shape
    seen = np.full(n_items + 1, -1, np.int64)
    width = 0
    for b in range(b_total):
        distinct = 0
        for c in range(w):
            v = items[b, c] + 1
            if seen[v] != b:
                seen[v] = b
                distinct += 1
        width = max(width, distinct)
    contrib = np.zeros((b_total, width, n_lists), np.float32)
    cand = np.full((b_total, width), -1, np.int64)
    hit = np.zeros((b_total, width), np.bool_)
    order = np.empty(w, np.int64)
    for b in range(b_total):
        for c in range(w):
            order[c] = (items[b, c] + 1) * w + c
        order.sort()  # by item, then column: the stable order
        slot, previous = -1, -2
        for q in range(w):
            c = order[q] % w
            it = items[b, c]
            if it != previous:
                slot += 1
                previous = it
            if it < 0:
                continue
            contrib[b, slot, source[c]] = np.float32(1.0 / (offset + 1 + rank[c]))
            cand[b, slot] = it
            key = b * n_items + it
            at = np.searchsorted(relevant_keys, key)
            hit[b, slot] = at < relevant_keys.shape[0] and relevant_keys[at] == key
    return contrib, cand, hit


@_jit()
def hits_at_k(fused, hit, k):
    """Per row: how many of the k largest of fused (B x C, >= 0) are hits with a positive score,
    and whether that depends on which of the scores tied at the k-th largest are taken (then the
    caller decides as its own selection would). Rows of at most k scores count every positive hit."""
    b_total, c_total = fused.shape
    count = np.zeros(b_total, np.int64)
    unsure = np.zeros(b_total, np.bool_)
    buf = np.empty(c_total, np.float32)
    for b in range(b_total):
        threshold = np.float32(0.0)
        if c_total > k:
            for c in range(c_total):
                buf[c] = -fused[b, c]
            _select(buf, c_total, k)
            threshold = -buf[k - 1]  # the k-th largest
        above = tied = 0
        hits_above = hits_tied = 0
        for c in range(c_total):
            v = fused[b, c]
            if v > threshold:
                above += 1
                hits_above += hit[b, c]
            elif v == threshold:
                tied += 1
                hits_tied += hit[b, c]
        count[b] = hits_above
        if c_total <= k or threshold <= 0 or hits_tied == 0:
            continue  # every positive score is in, or the tied ones are not positive or not hits
        if hits_tied == tied or above + tied == k:
            count[b] += min(hits_tied, k - above)  # all tied are hits, or all tied are in
        else:
            unsure[b] = True
    return count, unsure


# --- item-kNN from co-occurrence ---------------------------------------------------------------


@_jit()
def _min_heap_push(hs, hi, size, s, i):
    """Push (s, i) on a min-heap of (score, item) pairs held in hs / hi (pairs compared as tuples)."""
    j = size
    while j > 0:
        p = (j - 1) >> 1
        if hs[p] < s or (hs[p] == s and hi[p] < i):
            break
        hs[j] = hs[p]
        hi[j] = hi[p]
        j = p
    hs[j] = s
    hi[j] = i


@_jit()
def _min_heap_pop(hs, hi, size):
    """Remove the smallest pair of a min-heap of `size` pairs (size - 1 remain)."""
    size -= 1
    s, i = hs[size], hi[size]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= size:
            break
        if c + 1 < size and (hs[c + 1] < hs[c] or (hs[c + 1] == hs[c] and hi[c + 1] < hi[c])):
            c += 1
        if s < hs[c] or (s == hs[c] and i < hi[c]):
            break
        hs[j] = hs[c]
        hi[j] = hi[c]
        j = c
    if size > 0:
        hs[j] = s
        hi[j] = i


@_jit()
def cooccurrence_top_n(item_indptr, item_users, item_weights, user_indptr, user_items, user_weights, allowed,
                       n, start, stop, like_implicit):
    """Top-n co-occurrence neighbours of items start..stop-1: similarity(i, j) = sum over users u
    of w(u, i) * w(u, j) (float64, users in ascending order as the CSRs give them), neighbours
    limited to allowed items other than i with a positive similarity.

    item_* is the items x users CSR and user_* the users x items CSR of the same weights (sorted
    indices). like_implicit: pick as implicit's all_pairs_knn with K = n + 1 does (its heap over
    the items in its visiting order: ties at the cut go its way, and the item itself or blocked
    items take places before the restriction), so the result equals recall.recaller's
    cooccurrence_neighbours on implicit; otherwise the n best by (float32 similarity desc, item
    asc) among the allowed items. Returns (items int64 rows x n, -1 pads; scores float32, -inf).
    """
    rows = stop - start
    n_items = allowed.shape[0]
    items = np.full((rows, n), -1, np.int64)
    scores = np.full((rows, n), -np.inf, np.float32)
    if n <= 0:
        return items, scores
    acc = np.zeros(n_items, np.float64)
    mark = np.zeros(n_items, np.bool_)
    touched = np.empty(n_items, np.int64)
    big_k = n + 1
    hs = np.empty(big_k, np.float64)
    hi = np.empty(big_k, np.int64)
    keys = np.empty(n_items + 1, np.uint64)
    tmp = np.empty(n_items + 1, np.uint64)
    one = np.empty(1, np.float32)
    one_bits = one.view(np.uint32)
    for i in range(start, stop):
        nt = 0
        for a in range(item_indptr[i], item_indptr[i + 1]):
            u = item_users[a]
            w1 = item_weights[a]
            for b in range(user_indptr[u], user_indptr[u + 1]):
                j = user_items[b]
                acc[j] += user_weights[b] * w1
                if not mark[j]:
                    mark[j] = True
                    touched[nt] = j
                    nt += 1
        cnt = 0
        if like_implicit:
            size = 0
            for t in range(nt - 1, -1, -1):  # implicit walks its list from the last item touched
                j = touched[t]
                s = acc[j]
                if size < big_k or s > hs[0]:
                    if size >= big_k:
                        _min_heap_pop(hs, hi, size)
                        size -= 1
                    _min_heap_push(hs, hi, size, s, j)
                    size += 1
            for t in range(size):
                j = hi[t]
                if j != i and allowed[j] and hs[t] > 0:
                    one[0] = np.float32(hs[t])
                    keys[cnt] = _key(one_bits[0], j)
                    cnt += 1
        else:
            for t in range(nt):
                j = touched[t]
                if j != i and allowed[j] and acc[j] > 0:
                    one[0] = np.float32(acc[j])
                    keys[cnt] = _key(one_bits[0], j)
                    cnt += 1
        for t in range(nt):
            acc[touched[t]] = 0.0
            mark[touched[t]] = False
        kk = _smallest(keys, cnt, n, tmp)
        for t in range(kk):
            items[i - start, t] = np.int64(keys[t] & np.uint64(0xFFFF_FFFF))
            one_bits[0] = _key_bits(keys[t])
            scores[i - start, t] = one[0]
    return items, scores


@_jit()
def cap_rows(indptr, indices, data, priority, cap):
    """A CSR with at most `cap` entries per row: each row keeps its entries of highest priority
    (ties: lower column first), columns stay sorted. Returns (indptr, indices, data)."""
    rows = indptr.shape[0] - 1
    out_ptr = np.zeros(rows + 1, np.int64)
    for r in range(rows):
        out_ptr[r + 1] = out_ptr[r] + min(cap, indptr[r + 1] - indptr[r])
    out_idx = np.empty(out_ptr[rows], indices.dtype)
    out_data = np.empty(out_ptr[rows], data.dtype)
    for r in range(rows):
        lo, hi = indptr[r], indptr[r + 1]
        at = out_ptr[r]
        if hi - lo <= cap:
            out_idx[at:at + hi - lo] = indices[lo:hi]
            out_data[at:at + hi - lo] = data[lo:hi]
            continue
        order = np.argsort(-priority[lo:hi], kind="mergesort")[:cap]  # stable: lower column first on ties
        order.sort()
        for t in range(cap):
            out_idx[at + t] = indices[lo + order[t]]
            out_data[at + t] = data[lo + order[t]]
    return out_ptr, out_idx, out_data


# --- numba's own threads (parallel=True), measured against the thread-pool drivers below --------


@_jit(parallel=True)
def exact_top_k_keys_parallel(queries, vectors, item_idx, k, ex_indptr, ex_pos, bounds, chunk=4096):
    """exact_top_k_keys over chunks of queries on numba's threads (prange)."""
    b_total = queries.shape[0]
    keys = np.empty((b_total, k), np.uint64)
    chunks = (b_total + chunk - 1) // chunk
    for c in prange(chunks):
        a = c * chunk
        b = min(a + chunk, b_total)
        keys[a:b] = exact_top_k_keys(queries[a:b], vectors, item_idx, k, ex_indptr[a:b + 1], ex_pos, bounds,
                                     TILE_QUERIES, TILE_ITEMS)
    return keys


@_jit(parallel=True)
def ivf_top_k_keys_parallel(queries, probes, offsets, vectors, item_idx, k, ex_indptr, ex_pos, bounds,
                            chunk=4096):
    """ivf_top_k_keys over chunks of queries on numba's threads (prange)."""
    b_total = queries.shape[0]
    keys = np.empty((b_total, k), np.uint64)
    chunks = (b_total + chunk - 1) // chunk
    for c in prange(chunks):
        a = c * chunk
        b = min(a + chunk, b_total)
        keys[a:b] = ivf_top_k_keys(queries[a:b], probes[a:b], offsets, vectors, item_idx, k, ex_indptr[a:b + 1],
                                   ex_pos, bounds, IVF_TILE_QUERIES, 1)
    return keys


# --- thread drivers ------------------------------------------------------------------------------


def fuse(items: np.ndarray, contrib: np.ndarray, code: np.ndarray, n_lists: int, n_items: int, k: int,
         threads: int = 1, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fuse_top_k over `threads` threads."""
    items = np.ascontiguousarray(items, dtype=np.int64)
    contrib = np.ascontiguousarray(contrib, dtype=np.float64)
    code = np.ascontiguousarray(code, dtype=np.int8)
    b = len(items)
    out = (np.empty((b, max(k, 0)), np.int64), np.empty((b, max(k, 0)), np.float32),
           np.empty((b, max(k, 0)), np.int8))

    def run(a: int, c: int) -> None:
        for target, part in zip(out, fuse_top_k(items[a:c], contrib, code, n_lists, n_items, k)):
            target[a:c] = part

    in_chunks(b, chunk, threads, run)
    return out


def exclusion_lists(exclude, item_idx: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, positions) of a CSR matrix of excluded item indices (one row per query, or None),
    mapped to index positions, sorted within each row; items not in the index are dropped."""
    if exclude is None:
        return np.zeros(rows + 1, np.int64), np.zeros(0, np.int64)
    position = item_positions(exclude, item_idx, rows)
    return excluded_positions(exclude.indptr.astype(np.int64), exclude.indices.astype(np.int64), position)


def exact_keys_numpy_product(queries: np.ndarray, vectors: np.ndarray, item_idx: np.ndarray, k: int,
                             ex_indptr: np.ndarray, ex_pos: np.ndarray, bounds: np.ndarray,
                             tile_queries: int = TILE_QUERIES, tile_items: int = TILE_ITEMS) -> np.ndarray:
    """exact_top_k_keys with the products taken by numpy's np.matmul (numpy's own BLAS, the one
    recall.index calls) and only the selection compiled: with recall.index's tiles and no early
    stop, the very products today's search computes, so its results bit for bit."""
    b_total, n = len(queries), len(vectors)
    keys = np.full((b_total, max(k, 0)), PAD, np.uint64)
    kk = min(k, n)
    if kk <= 0 or b_total == 0:
        return keys
    tq = min(tile_queries, b_total)
    flat = np.empty(tq * tile_items, np.float32)
    state = exact_state(tq, kk)
    active = state[5]
    for q0 in range(0, b_total, tq):
        m = rows = exact_begin(queries, q0, ex_indptr, state)
        qt = queries[q0:q0 + rows]
        for i0 in range(0, n, tile_items):
            if m == 0:
                break
            i1 = min(i0 + tile_items, n)
            block = flat[:m * (i1 - i0)].reshape(m, i1 - i0)
            np.matmul(qt if m == rows else qt[active[:m]], vectors[i0:i1].T, out=block)
            m = exact_offer_block(block, i0, item_idx, q0, ex_indptr, ex_pos, kk, bounds[i1], state, m)
        exact_end(state, kk, rows, keys[q0:q0 + rows])
    return keys


def exact_search(queries: np.ndarray, vectors: np.ndarray, item_idx: np.ndarray, k: int,
                 ex_indptr: np.ndarray, ex_pos: np.ndarray, bounds: np.ndarray | None = None,
                 threads: int = 1, chunk: int = 2048, product: str = "numba", tile_queries: int = TILE_QUERIES,
                 tile_items: int = TILE_ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over `threads` threads, `chunk` queries a task; (items, scores) B x k.

    bounds: norm_bounds(vectors), computed when None; np.full(n + 1, np.inf) scans every item as
    today's search does. product: "numba" (exact_top_k_keys: the whole loop compiled, np.dot on
    the BLAS numba links, SciPy's) or "numpy" (exact_keys_numpy_product: numpy's BLAS)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    bounds = norm_bounds(vectors) if bounds is None else bounds
    keys = np.empty((len(q), max(k, 0)), np.uint64)
    kernel = exact_top_k_keys if product == "numba" else exact_keys_numpy_product

    def run(a: int, b: int) -> None:
        keys[a:b] = kernel(q[a:b], vectors, item_idx, k, ex_indptr[a:b + 1], ex_pos, bounds, tile_queries,
                           tile_items)

    in_chunks(len(q), chunk, threads, run)
    return unpack_keys(keys)


def ivf_search(queries: np.ndarray, probes: np.ndarray, offsets: np.ndarray, vectors: np.ndarray,
               item_idx: np.ndarray, k: int, ex_indptr: np.ndarray, ex_pos: np.ndarray,
               bounds: np.ndarray | None = None, threads: int = 1, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """ivf_top_k_keys over `threads` threads. bounds: cell_bounds(vectors, offsets) (computed when None)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    offsets = offsets.astype(np.int64)
    bounds = cell_bounds(vectors, offsets) if bounds is None else bounds
    keys = np.empty((len(q), max(k, 0)), np.uint64)

    def run(a: int, b: int) -> None:
        keys[a:b] = ivf_top_k_keys(q[a:b], probes[a:b], offsets, vectors, item_idx, k, ex_indptr[a:b + 1], ex_pos,
                                   bounds)

    in_chunks(len(q), chunk, threads, run)
    return unpack_keys(keys)


def probe_cells(queries: np.ndarray, centroids: np.ndarray, nprobe: int, threads: int = 1,
                chunk: int = 8192) -> np.ndarray:
    """nearest_cells over `threads` threads."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    out = np.empty((len(q), max(nprobe, 0)), np.int64)

    def run(a: int, b: int) -> None:
        out[a:b] = nearest_cells(q[a:b], centroids, nprobe)

    in_chunks(len(q), chunk, threads, run)
    return out


def item_based(neighbours: np.ndarray, similarity: np.ndarray, recent: np.ndarray, seen, allowed: np.ndarray,
               k: int, threads: int = 1, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """item_based_top_k for a batch whose seen rows are the CSR `seen` (len(recent) rows)."""
    b = len(recent)
    items = np.empty((b, max(k, 0)), np.int64)
    scores = np.empty((b, max(k, 0)), np.float32)
    indptr, indices = seen.indptr.astype(np.int64), seen.indices.astype(np.int64)
    recent = np.ascontiguousarray(recent, dtype=np.int64)
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int64)
    similarity = np.ascontiguousarray(similarity, dtype=np.float32)
    allowed = np.ascontiguousarray(allowed, dtype=np.bool_)

    def run(a: int, c: int) -> None:
        items[a:c], scores[a:c] = item_based_top_k(neighbours, similarity, recent[a:c], indptr[a:c + 1] - 0,
                                                   indices, allowed, k)

    in_chunks(b, chunk, threads, run)
    return items, scores


def ease(weights: np.ndarray, items: np.ndarray, seen, k: int, threads: int = 1,
         chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """ease_top_k_keys for a batch whose seen rows are the CSR `seen` (items: the modelled item
    indices, ascending); (items, scores) B x k."""
    items = np.ascontiguousarray(items, dtype=np.int64)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    ex_indptr, ex_pos = exclusion_lists(seen, items, seen.shape[0])
    keys = np.empty((seen.shape[0], max(k, 0)), np.uint64)

    def run(a: int, c: int) -> None:
        keys[a:c] = ease_top_k_keys(weights, items, k, ex_indptr[a:c + 1], ex_pos)

    in_chunks(seen.shape[0], chunk, threads, run)
    return unpack_keys(keys)


def cooccurrence_weights(user_items, kind: str, k1: float = 1.2, b: float = 0.75):
    """The users x items weights implicit's recommenders fit on (BM25: bm25_weight over item rows;
    cosine: item rows scaled to unit length), computed by implicit's own functions, float64 CSR."""
    # imported here: the serving processes use this module's search kernels, never this
    from implicit.nearest_neighbours import bm25_weight, normalize

    counts = user_items.tocsr()
    if kind == "bm25":
        weighted = bm25_weight(counts.T, k1, b).T
    elif kind == "cosine":
        weighted = normalize(counts.T).T
    else:
        raise ValueError(f"unknown co-occurrence similarity {kind!r}")
    out = sp.csr_matrix(weighted, dtype=np.float64)
    out.sort_indices()
    return out


def item_knn(user_items, kind: str, n: int, allowed: np.ndarray, max_user_items: int = 0,
             priority: np.ndarray | None = None, like_implicit: bool = True, threads: int = 1,
             chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Top-n co-occurrence neighbours of every item (n_items x n), as implicit's BM25 and cosine
    recommenders compute them (kind: bm25 or cosine).

    max_user_items > 0 caps each user's row at its `max_user_items` entries of highest `priority`
    (ties: lower item first), after weighting, so the kept entries keep their full-matrix weights.
    priority: aligned with the entries of user_items as a CSR with sorted indices (e.g. the last
    time of each pair, to keep the most recent); default: the weight itself. A user with d items
    costs d^2 updates: the heaviest users dominate the cost while adding least to any one item's
    neighbours (bench.kernels measures what a cap costs in recall).
    """
    weights = cooccurrence_weights(user_items, kind)
    if max_user_items > 0:
        prio = weights.data if priority is None else np.asarray(priority, np.float64)
        if prio.shape != weights.data.shape:
            raise ValueError("priority must align with the matrix entries")
        ptr, idx, data = cap_rows(weights.indptr.astype(np.int64), weights.indices, weights.data, prio, max_user_items)
        weights = sp.csr_matrix((data, idx, ptr), shape=weights.shape)
    items_t = weights.T.tocsr()
    items_t.sort_indices()
    n_items = weights.shape[1]
    allowed = np.ascontiguousarray(allowed, dtype=np.bool_)
    out_items = np.empty((n_items, max(n, 0)), np.int64)
    out_scores = np.empty((n_items, max(n, 0)), np.float32)
    args = (items_t.indptr.astype(np.int64), items_t.indices.astype(np.int64), items_t.data,
            weights.indptr.astype(np.int64), weights.indices.astype(np.int64), weights.data, allowed, n)

    def run(a: int, b: int) -> None:
        out_items[a:b], out_scores[a:b] = cooccurrence_top_n(*args, a, b, like_implicit)

    in_chunks(n_items, chunk, threads, run)
    return out_items, out_scores
