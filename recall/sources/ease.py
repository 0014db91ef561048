"""`ease`: EASE (Steck 2019), a closed-form item-item model: B = I - P / diag(P) with
P = (X'X + l2 I)^-1 over the binary user x item matrix, a user's scores being the sum of the B rows
of the items they interacted with. The inversion is cubic in the items, so the model covers the
`max_items` most popular allowed items (the head, where nearly all interactions are); it is a
strong single source on catalogues of a few thousand items and is left out of larger ones' tails."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as la
from threadpoolctl import threadpool_limits

from recall.kernel.backend import kernels
from recall.kernel.state import ItemSide, UserBatch
from recall.sources.base import FitContext, Lists, Source


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
    return kernels().ease(model.weights, model.items, batch.seen, k, threads)


SOURCE = Source("ease", label="ease", default_weight=0.5, candidates=candidates, build=build)
