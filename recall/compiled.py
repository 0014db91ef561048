"""Compiled (numba) kernels for the candidate search: exact and IVF top-k by inner product, the
item_based aggregation and the co-occurrence item-kNN.

Every kernel is a pure function of numpy arrays (no global state but numba's on-disk cache),
compiled with `nogil=True` so callers can run batches on their own threads, and deterministic: a
row's result depends only on that row's inputs, never on how rows are split across threads.

Order of results everywhere: score descending, ties by item index ascending, as the packed keys of
`recall.index.pack` order them (so -0.0 ranks just below +0.0, exactly as today's search does);
pads are item -1 with score -inf.

The thread drivers (`*_search`, `item_knn`) split the rows into chunks and call the kernels from a
thread pool with BLAS pinned to one thread: measured on 2 cores, this was as fast as numba's
`parallel=True` and composes with callers that already run threads of their own.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

PAD = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
TILE_QUERIES = 256  # exact: queries scored together (their block of scores stays in L2)
TILE_ITEMS = 2048  # exact: items per product
IVF_TILE_QUERIES = 2048  # ivf: queries whose probes are grouped by cell
CHUNK = 32  # scores checked against the threshold at once before any is looked at alone

# --- packed keys -------------------------------------------------------------------------
# key = (score bits mapped to descending uint32) << 32 | item: ascending keys = best first.


@njit(cache=True, nogil=True, inline="always")
def _key(bits, item):
    """The packed key of a float32's raw bits (uint32) and an item index (as recall.index.pack)."""
    b = np.uint64(bits)
    if b & np.uint64(0x8000_0000):
        desc = b
    else:
        desc = b ^ np.uint64(0x7FFF_FFFF)
    return (desc << np.uint64(32)) | np.uint64(np.uint32(item))


@njit(cache=True, nogil=True, inline="always")
def _key_bits(key):
    """The float32 bits (uint32) held in a key."""
    desc = key >> np.uint64(32)
    if desc & np.uint64(0x8000_0000):
        return np.uint32(desc)
    return np.uint32(desc ^ np.uint64(0x7FFF_FFFF))


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _select(a, n, k):
    """Rearrange a[:n] (distinct keys) so that a[:k] are its k smallest, a[k - 1] the largest of them."""
    lo, hi, target = 0, n - 1, k - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break


@njit(cache=True, nogil=True, inline="always")
def _bits_to_float(bits, one, one_bits):
    one_bits[0] = bits
    return one[0]


@njit(cache=True, nogil=True)
def _scan_row(row, bits, lo, item_idx, buf, cnt, k, limit, ex_pos, e, e_end, one, one_bits):
    """Offer row[j] (index position lo + j) to a row's buffer, excluded positions skipped.

    limit: [threshold key]; the threshold score is the float of its bits (-inf while the key is
    PAD). Scores below the threshold are passed over CHUNK at a time (a vectorised count).
    Returns (count, exclusion cursor)."""
    w = row.shape[0]
    thr = np.float32(-np.inf) if limit[0] == PAD else _bits_to_float(_key_bits(limit[0]), one, one_bits)
    for c0 in range(0, w, CHUNK):
        chunk = row[c0:c0 + CHUNK]  # a slice from 0: LLVM vectorises the count below
        hits = 0
        for j in range(chunk.shape[0]):
            hits += chunk[j] >= thr
        if hits == 0:
            continue
        for j in range(c0, c0 + chunk.shape[0]):
            if row[j] >= thr:
                pos = lo + j
                while e < e_end and ex_pos[e] < pos:
                    e += 1
                if e < e_end and ex_pos[e] == pos:
                    continue
                key = _key(bits[j], item_idx[pos])
                if key < limit[0]:
                    buf[cnt] = key
                    cnt += 1
                    if cnt == buf.shape[0]:
                        _select(buf, cnt, k)
                        cnt = k
                        limit[0] = buf[k - 1]
                        thr = _bits_to_float(_key_bits(limit[0]), one, one_bits)
    return cnt, e


@njit(cache=True, nogil=True)
def _finish(buf, cnt, k, out):
    """A row's k best keys, sorted, PAD after the last."""
    if cnt > k:
        _select(buf, cnt, k)
        cnt = k
    row = np.sort(buf[:cnt])
    out[:cnt] = row
    out[cnt:] = PAD


# --- exact search ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def exact_state(rows, k):
    """Per-row working arrays of the exact search for a tile of `rows` queries and k >= 1."""
    return (np.empty((rows, 2 * k), np.uint64), np.zeros(rows, np.int64), np.empty((rows, 1), np.uint64),
            np.empty(rows, np.int64), np.empty(rows, np.float64), np.empty(rows, np.int64))


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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
        counts[r], cursor[r] = _scan_row(block[a], bits[a], i0, item_idx, bufs[r], counts[r], k, limits[r], ex_pos,
                                         cursor[r], ex_indptr[q0 + r + 1], one, one_bits)
        if limits[r, 0] != PAD:
            thr = _bits_to_float(_key_bits(limits[r, 0]), one, one_bits)
            if qnorm[r] * bound_next * BOUND_MARGIN < thr:
                continue  # done: nothing further can reach the threshold
        active[kept] = r
        kept += 1
    return kept


@njit(cache=True, nogil=True)
def exact_end(state, k, rows, keys_out):
    bufs, counts = state[0], state[1]
    for r in range(rows):
        _finish(bufs[r], counts[r], k, keys_out[r])


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def unpack_keys(keys):
    """(items int64 with -1 pads, scores float32 with -inf pads) of B x k packed keys."""
    items = np.empty(keys.shape, np.int64)
    scores = np.empty(keys.shape, np.float32)
    _unpack_rows(keys, items, scores)
    return items, scores


@njit(cache=True, nogil=True)
def exact_top_k(queries, vectors, item_idx, k, ex_indptr, ex_pos, bounds, tile_queries=TILE_QUERIES,
                tile_items=TILE_ITEMS):
    """Each query's top-k (items int64 B x k, scores float32 B x k) by inner product over all
    items, excluded positions skipped; -1 / -inf pads where fewer than k remain."""
    return unpack_keys(exact_top_k_keys(queries, vectors, item_idx, k, ex_indptr, ex_pos, bounds,
                                        tile_queries, tile_items))


@njit(cache=True, nogil=True)
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
