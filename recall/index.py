"""FAISS indexes over item vectors: exact inner product, or IVF on the L2-transformed vectors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Searcher:
    """An index over a subset of items; results come back as item indices (-1 for none)."""

    index: faiss.Index
    item_idx: np.ndarray  # int64: index position -> item index
    vectors: np.ndarray  # the indexed vectors, for exact rescoring of approximate hits
    approx: bool

    @property
    def size(self) -> int:
        return len(self.item_idx)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (items int64, scores float32), -1 and -inf where fewer exist."""
        k = min(k, self.size)
        if k <= 0 or len(queries) == 0:
            return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.approx:
            q = np.hstack([q, np.zeros((len(q), 1), np.float32)])
        scores, pos = self.index.search(q, k)
        found = pos >= 0
        items = np.where(found, self.item_idx[np.where(found, pos, 0)], -1)
        if self.approx:
            # L2 distances on the augmented vectors; report the true inner products.
            vec = self.vectors[np.where(found, pos, 0)]
            scores = np.einsum("bkf,bf->bk", vec, np.ascontiguousarray(queries, dtype=np.float32))
        scores, items = sort_rows(np.where(found, scores, -np.inf).astype(np.float32), items)
        return items, scores


def sort_rows(scores: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by score descending, ties by item index ascending, so output is deterministic."""
    if scores.shape[1] == 0:
        return scores, items
    pre = np.argsort(np.where(items < 0, np.iinfo(np.int64).max, items), axis=1, kind="stable")
    scores, items = np.take_along_axis(scores, pre, 1), np.take_along_axis(items, pre, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(items, order, 1)


def exact_index(vectors: np.ndarray, item_idx: np.ndarray) -> Searcher:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return Searcher(index, item_idx.astype(np.int64), vectors, approx=False)


def approx_index(vectors: np.ndarray, item_idx: np.ndarray, nlist: int, nprobe: int, seed: int) -> Searcher:
    """IVF-Flat over vectors augmented so L2 order equals inner-product order (Bachrach et al. 2014)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    norms = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(norms.max() - norms, 0)).astype(np.float32)
    augmented = np.ascontiguousarray(np.hstack([vectors, extra[:, None]]))
    nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatL2(dim + 1)
    index = faiss.IndexIVFFlat(quantizer, dim + 1, nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = augmented if n <= 256 * nlist else augmented[np.sort(rng.choice(n, 256 * nlist, replace=False))]
    index.train(sample)
    index.add(augmented)
    index.nprobe = nprobe or max(1, math.ceil(nlist / 8))
    return Searcher(index, item_idx.astype(np.int64), vectors, approx=True)


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine via inner product); zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
