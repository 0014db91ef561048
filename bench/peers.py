"""What a user would otherwise call directly, run on the pipeline's own factors.

- implicit's `recommend` for every user, already-liked items filtered, batched over user ids;
- implicit's `similar_items` for every item;
- the bare scoring product users @ items.T in batches (the physical limit of exact search),
  and the same product followed by a minimal argpartition top-k.

implicit is run the way it runs best here: its own threads over query batches, BLAS pinned to
one thread underneath (a multi-threaded BLAS inside each of its threads only oversubscribes).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

BATCH = 8192  # users per recommend call, so the peer's outputs stay bounded too
PRODUCT_BATCH = 1024  # users per matrix product: the score block stays near the caches
ARGPARTITION_USERS = 20_000  # the argpartition peer runs on this many users; its time is scaled


def implicit_model(users: np.ndarray, items: np.ndarray, threads: int):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=users.shape[1], num_threads=threads, random_state=0)
    model.user_factors, model.item_factors = users, items
    return model


def recommend_all(model, seen: sp.csr_matrix, k: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k unseen items for every user; returns the rows of users `keep` (for agreement)."""
    n = seen.shape[0]
    keep_ids = np.full((keep.size, k), -1, np.int64)
    keep_scores = np.full((keep.size, k), -np.inf, np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n, BATCH):
            users = np.arange(start, min(start + BATCH, n))
            ids, scores = model.recommend(users, seen[users], N=k, filter_already_liked_items=True)
            mine = (keep >= start) & (keep < users[-1] + 1)
            keep_ids[mine] = ids[keep[mine] - start]
            keep_scores[mine] = scores[keep[mine] - start]
    return keep_ids, keep_scores


def similar_all(model, k: int, keep: np.ndarray) -> np.ndarray:
    """Top-k cosine neighbours of every item, the item itself dropped; rows of items `keep`."""
    n = model.item_factors.shape[0]
    out = np.full((keep.size, k), -1, np.int64)
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n, BATCH):
            items = np.arange(start, min(start + BATCH, n))
            ids, _ = model.similar_items(items, N=k + 1)
            mine = (keep >= start) & (keep < items[-1] + 1)
            for row, item in zip(np.flatnonzero(mine), keep[mine]):
                others = ids[item - start][ids[item - start] != item]
                out[row, :min(k, others.size)] = others[:k]
    return out


def scoring_product(users: np.ndarray, items: np.ndarray) -> float:
    """users @ items.T in batches into one reused buffer (BLAS on all cores); returns a checksum."""
    block = np.empty((PRODUCT_BATCH, items.shape[0]), np.float32)
    total = 0.0
    for start in range(0, len(users), PRODUCT_BATCH):
        q = users[start:start + PRODUCT_BATCH]
        np.matmul(q, items.T, out=block[:len(q)])
        total += float(block[0, 0])
    return total


def product_topk(users: np.ndarray, items: np.ndarray, k: int) -> float:
    """The product plus an unsorted argpartition top-k per user (no filtering, no ordering)."""
    block = np.empty((PRODUCT_BATCH, items.shape[0]), np.float32)
    total = 0
    for start in range(0, len(users), PRODUCT_BATCH):
        q = users[start:start + PRODUCT_BATCH]
        np.matmul(q, items.T, out=block[:len(q)])
        top = np.argpartition(block[:len(q)], -k, axis=1)[:, -k:]
        total += int(top[0, 0])
    return float(total)
