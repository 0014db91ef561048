"""Item-item neighbours: from co-occurrence (implicit's BM25 / cosine item-kNN) or by the cosine
of the ALS item factors (the i2i table, and item_based with similarity = "als")."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recall.kernel.compiled import item_knn
from recall.kernel.rows import compact
from recall.kernel.search import search
from recall.kernel.state import ItemIndex, Neighbours
from recall.model.index import exact_index, normalised

I2I_BATCH = 8192


def cosine_neighbours(item_vectors: np.ndarray, allowed: np.ndarray, k: int, threads: int) -> Neighbours:
    """Top-k cosine neighbours of every item among allowed items, the item itself excluded."""
    unit, index = cosine_index(item_vectors, allowed)
    n = len(unit)
    items = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    for start in range(0, n, I2I_BATCH):
        rows = np.arange(start, min(start + I2I_BATCH, n))
        items[rows], scores[rows] = cosine_rows(unit, index, rows, k, threads)
    return Neighbours(items, scores)


def cosine_index(item_vectors: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, ItemIndex]:
    """Unit item vectors, and the exact index of the allowed ones (what cosine_rows searches)."""
    unit = normalised(item_vectors)
    allowed_idx = np.flatnonzero(allowed)
    return unit, exact_index(unit[allowed_idx], allowed_idx)


def cosine_rows(unit: np.ndarray, index: ItemIndex, rows: np.ndarray, k: int,
                threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k cosine neighbours of items `rows` (the item itself excluded), -1 / -inf pads."""
    got, got_scores = search(index, unit[rows], k + 1, threads=threads)
    valid = (got >= 0) & (got != rows[:, None]) & np.isfinite(got_scores)
    items, scores = compact(valid, k, got, got_scores, fills=(-1, -np.inf))
    return items, scores


def cooccurrence_neighbours(user_items: sp.csr_matrix, kind: str, k: int, allowed: np.ndarray,
                            max_user_items: int = 0, threads: int = 1) -> Neighbours:
    """Top-k item-kNN neighbours from co-occurrence, as implicit's BM25 / cosine recommenders
    (K = k + 1) find them, the item itself and blocked items left out; compiled, on `threads`
    threads. `max_user_items` > 0 keeps each user's heaviest entries only: a user with d items
    costs d^2 updates, and the heaviest users add least to any one item's neighbours."""
    items, scores = item_knn(user_items, kind, k, allowed, max_user_items=max_user_items, threads=threads)
    return Neighbours(items, scores)
