"""Packed keys: one sortable integer per (row, item) or per (score, item)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recall.arrays import contains

_LOW = np.uint64(0xFFFF_FFFF)


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
