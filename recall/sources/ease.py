"""`ease`: EASE (Steck 2019), a closed-form item-item model: B = I - P / diag(P) with
P = (X'X + l2 I)^-1 over the binary user x item matrix, a user's scores being the sum of the B rows
of the items they interacted with. The inversion is cubic in the items, so the model covers the
`max_items` most popular allowed items (the head, where nearly all interactions are); it is a
strong single source on catalogues of a few thousand items and is left out of larger ones' tails."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recall.kernel.rows import best_per_row, pad_to
from recall.kernel.state import ItemSide, UserBatch
from recall.sources.base import FitContext, Lists, Source

TILE = 2048  # users scored together: a tile x items float32 block


@dataclass(frozen=True)
class Ease:
    items: np.ndarray  # int64: the modelled items (ascending item indices)
    weights: np.ndarray  # float32 len(items) x len(items), zero diagonal


def build(ctx: FitContext) -> tuple[Ease, dict]:
    options = ctx.spec.recall.ease
    seen = ctx.seen.astype(np.float32)
    items = head(np.asarray(seen.sum(axis=0)).ravel(), ctx.allowed, options.max_items)
    x = seen[:, items].tocsc()
    gram = (x.T @ x).toarray().astype(np.float32)
    return solve(items, gram, options.l2, ctx.threads), {"ease_items": int(items.size)}


def head(users_per_item: np.ndarray, allowed: np.ndarray, max_items: int) -> np.ndarray:
    """The `max_items` allowed items with the most users, as ascending item indices."""
    popularity = np.where(allowed, users_per_item, -1)
    return np.sort(np.argsort(-popularity, kind="stable")[:min(max_items, int(allowed.sum()))]).astype(np.int64)


def solve(items: np.ndarray, gram: np.ndarray, l2: float, threads: int) -> Ease:
    """EASE's weights from the Gram matrix X'X of the modelled items (any engine computes it)."""
    gram = np.array(gram, dtype=np.float32)
    gram[np.diag_indices_from(gram)] += l2
    with threadpool_limits(threads, user_api="blas"):
        factor, info = la.lapack.spotrf(gram, lower=1, overwrite_a=1)
        inverse, info2 = la.lapack.spotri(factor, lower=1, overwrite_c=1)
    if info or info2:
        raise ValueError(f"EASE: the regularised Gram matrix is not positive definite (lapack {info}, {info2})")
    inverse = np.tril(inverse) + np.tril(inverse, -1).T
    weights = (-inverse / np.diag(inverse)[None, :]).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    return Ease(items, weights)


def candidates(side: ItemSide, batch: UserBatch, k: int, threads: int) -> Lists:
    """Each user's k best unseen modelled items by summed B rows of what they saw."""
    model: Ease = side.parts["ease"]
    position = np.full(side.n_items, -1, np.int64)
    position[model.items] = np.arange(model.items.size)
    items_out, scores_out = [], []
    for lo in range(0, batch.size, TILE):
        rows = batch.seen[lo:lo + TILE]
        mapped = position[rows.indices]
        keep = mapped >= 0
        row_of = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))[keep]
        x = sp.csr_matrix((np.ones(row_of.size, np.float32), (row_of, mapped[keep])),
                          shape=(rows.shape[0], model.items.size))
        scores = np.asarray(x @ model.weights, dtype=np.float32)
        scores[row_of, mapped[keep]] = -np.inf  # seen
        width = min(k, model.items.size)
        top = np.argpartition(-scores, width - 1, axis=1)[:, :width] if width < model.items.size else \
            np.broadcast_to(np.arange(model.items.size), scores.shape)
        got = np.take_along_axis(scores, top, 1)
        items = np.where(np.isfinite(got), model.items[top], -1)
        items, got = best_per_row(items, got, width)
        items_out.append(items)
        scores_out.append(got)
    return pad_to(np.vstack(items_out), np.vstack(scores_out), k)


SOURCE = Source("ease", label="ease", default_weight=0.5, candidates=candidates, build=build)
