"""Small array helpers numpy lacks in a fast form."""
from __future__ import annotations

import numpy as np


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values: np.unique's result, by sort and compare (numpy 2.4's np.unique
    hashes first and runs ~15x slower on large int64 arrays)."""
    ordered = np.sort(values, axis=None)
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def contains(sorted_values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Mask: is each query value in `sorted_values` (sorted ascending)?"""
    if sorted_values.size == 0:
        return np.zeros(np.shape(query), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, query), sorted_values.size - 1)
    return sorted_values[pos] == query


def mapped(path) -> np.ndarray:
    """A read-only memory map of a .npy file, as a plain ndarray view (slices stay cheap)."""
    return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
