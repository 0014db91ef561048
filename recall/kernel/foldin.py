"""Folding a user into a trained ALS model from their items: one least-squares solve against the
fixed item factors, the maths of implicit's `AlternatingLeastSquares.recalculate_user` (CPU):

    x_u = (YtY + reg I + sum_i (c_i - 1) y_i y_i^T)^-1  sum_i c_i y_i,   c_i = alpha * r_i

with r the job's weighting of the user's summed weights (log1p, bm25 or none; as
`recall.model.matrix.confidence` gives it to training) and YtY + reg I computed once per model,
so a fold-in costs O(n f^2 + f^3) for n items. Pure functions: `recall serve` answers with
them, and the nearline refresh refolds users with them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recall.kernel.state import UserBatch

BM25_FLOOR = np.float32(1e-3)  # as confidence(): an observed pair stays a (weak) positive


@dataclass(frozen=True)
class FoldSettings:
    """The model's settings a fold-in needs besides the item factors."""

    factors: int
    regularization: float
    alpha: float
    weighting: str  # log, bm25, none
    bm25_k1: float = 100.0
    bm25_b: float = 0.8


@dataclass(frozen=True)
class FoldIn:
    """A model ready to fold users in: item factors, the precomputed YtY + reg I, and bm25's
    per-item length norm (the item statistics of the training window)."""

    factors: np.ndarray  # items x f, float32
    gram: np.ndarray  # f x f, float64: YtY + regularization * I
    settings: FoldSettings
    length_norm: np.ndarray | None = None  # bm25 only, float32 per item

    @classmethod
    def of(cls, factors: np.ndarray, settings: FoldSettings, weight_sum: np.ndarray | None = None) -> FoldIn:
        y = np.asarray(factors, dtype=np.float64)
        gram = y.T @ y + settings.regularization * np.eye(y.shape[1])
        norm = None
        if settings.weighting == "bm25":
            # implicit's bm25_weight over item rows: (1 - B) + B * row sum / mean row sum
            sums = np.asarray(weight_sum, dtype=np.float32)
            norm = (1.0 - settings.bm25_b) + settings.bm25_b * sums / sums.mean()
        return cls(np.asarray(factors, dtype=np.float32), gram, settings, norm)

    @property
    def n_items(self) -> int:
        return len(self.factors)


def summed(items: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A user's distinct items (sorted) and their summed weights (1 per occurrence by default)."""
    items = np.asarray(items, dtype=np.int64)
    w = np.ones(items.size, np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    distinct, inverse = np.unique(items, return_inverse=True)
    return distinct, np.bincount(inverse, weights=w, minlength=distinct.size).astype(np.float32)


def confidence(fold: FoldIn, items: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The r of confidence 1 + alpha * r for one user's distinct items and summed weights."""
    s = fold.settings
    counts = np.asarray(counts, dtype=np.float32)
    if s.weighting == "log":
        return np.log1p(counts).astype(np.float32)
    if s.weighting == "bm25":
        idf = np.log(fold.n_items) - np.log1p(items.size)  # the user is a column of the items x users matrix
        r = (counts * (s.bm25_k1 + 1.0) / (s.bm25_k1 * fold.length_norm[items] + counts) * idf).astype(np.float32)
        return np.maximum(r, BM25_FLOOR)
    return counts


def user_vector(fold: FoldIn, items: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The least-squares user vector for distinct `items` with weighted values `r` (float32, f)."""
    c = fold.settings.alpha * np.asarray(r, dtype=np.float64)
    y = fold.factors[items].astype(np.float64)
    weight = np.where(c > 0, c, 0.0)  # implicit: a negative confidence adds to A, not to b
    a = fold.gram + (y.T * (np.abs(c) - 1.0)) @ y
    return np.linalg.solve(a, y.T @ weight).astype(np.float32)


def fold_batch(fold: FoldIn | None, histories: Sequence[tuple[np.ndarray, np.ndarray | None]], recent: int,
               n_items: int) -> UserBatch:
    """A UserBatch of folded-in users for the candidate kernel. Each history is (item indices,
    most recent first; their weights or None for 1 each): the user's vector by fold-in (none
    without a model: sources without factors still answer), their items as the seen filter,
    their first `recent` distinct items as the recent items."""
    vectors = None if fold is None else np.zeros((len(histories), fold.settings.factors), np.float32)
    rows, cols = [], []
    latest = np.full((len(histories), recent), -1, np.int64)
    for u, (items, weights) in enumerate(histories):
        distinct, counts = summed(items, weights)
        if distinct.size and fold is not None:
            vectors[u] = user_vector(fold, distinct, confidence(fold, distinct, counts))
        rows.append(np.full(distinct.size, u, np.int64))
        cols.append(distinct)
        firsts = np.asarray(items, dtype=np.int64)[np.sort(np.unique(items, return_index=True)[1])][:recent]
        latest[u, :firsts.size] = firsts
    row, col = np.concatenate(rows or [np.zeros(0, np.int64)]), np.concatenate(cols or [np.zeros(0, np.int64)])
    seen = sp.csr_matrix((np.ones(row.size, np.int8), (row, col)), shape=(len(histories), n_items))
    seen.sort_indices()
    return UserBatch(np.arange(len(histories), dtype=np.int64), seen, vectors, latest if recent else None)
