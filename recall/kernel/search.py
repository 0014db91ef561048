"""Top-k by inner product over an ItemIndex: exact (every item, in descending norm order, each
row stopping once no further item can reach its k-th best) or approximate (IVF: only the cells a
query probes, picked by direction from the centroids). Both run the kernels of
recall.kernel.backend (compiled by default: BLAS tiles with the running top-k, excluded items
skipped, kept in compiled code; query chunks run on `threads` threads)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recall.kernel.backend import kernels
from recall.kernel.state import ItemIndex

CHUNK = 2048  # queries a task: fixed, so results never depend on the thread count


def search(index: ItemIndex, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
           threads: int = 1, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: (items int64, scores float32), -1 and -inf where fewer exist.

    Rows come sorted by score descending, ties by item index ascending. `exclude` is a CSR
    matrix, one row per query, of item indices that may not appear (e.g. items already seen).
    An IVF index scans `nprobe` cells (default: the index's own) and returns fewer than k where
    the probed cells hold fewer.
    """
    k = min(k, index.size)
    if k <= 0 or len(queries) == 0:
        return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    run = kernels()
    ex_indptr, ex_pos = run.exclusion_lists(exclude, index.item_idx, len(q))
    if index.approx:
        probes = probe(index, q, nprobe or index.nprobe, threads)
        return run.ivf_search(q, probes, index.offsets, index.vectors, index.item_idx, k, ex_indptr, ex_pos,
                              index.bounds, threads, CHUNK)
    return run.exact_search(q, index.vectors, index.item_idx, k, ex_indptr, ex_pos, index.bounds, threads, CHUNK)


def probe(index: ItemIndex, queries: np.ndarray, nprobe: int, threads: int = 1) -> np.ndarray:
    """Each query's `nprobe` nearest cells, nearest first. Probing is by direction: the cells were
    built on unit-bounded vectors, and a unit query (augmented by 0) ranks them by L2 distance,
    i.e. by inner product (a raw query's norm would let |centroid| decide)."""
    return kernels().probe_cells(queries, index.centroids, min(nprobe, index.nlist), threads)
