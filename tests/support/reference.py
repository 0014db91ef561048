"""Reference implementations the compiled kernels are tested against: plain numpy and implicit,
written for clarity, not speed (what the pipeline ran before the kernels were compiled)."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

from recall.kernel.keys import csr_keys, in_keys
from recall.kernel.rows import best_per_row, pad_to, sum_repeats


def item_based(neighbours: np.ndarray, similarity: np.ndarray, recent: np.ndarray, seen: sp.csr_matrix,
               allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unseen allowed neighbours of each user's recent items, by summed similarity (float64 sums
    in (recent, neighbour) order, rounded to float32)."""
    b = len(recent)
    nb = neighbours[np.maximum(recent, 0)].reshape(b, -1)
    sim = similarity[np.maximum(recent, 0)].reshape(b, -1).astype(np.float64)
    valid = np.repeat(recent >= 0, neighbours.shape[1], axis=1) & (nb >= 0) & (sim > 0)
    valid &= allowed[np.maximum(nb, 0)]
    valid &= ~in_keys(csr_keys(seen), np.arange(b)[:, None], nb, seen.shape[1])
    items, totals, _ = sum_repeats(np.where(valid, nb, -1), np.where(valid, sim, 0.0))
    return best_per_row(items, totals.astype(np.float32), k)


def ease(weights: np.ndarray, items: np.ndarray, seen: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's k best unseen modelled items by EASE score: scipy's sparse x dense product of the
    user's modelled items and the weights, seen items out, every score ranked (ties by item). The
    pipeline took an argpartition before the ranking until the compiled kernel: the same lists,
    but for which of the items tied at the cut it kept (any, not the lowest)."""
    position = np.full(seen.shape[1], -1, np.int64)
    position[items] = np.arange(items.size)
    mapped = position[seen.indices]
    keep = mapped >= 0
    row_of = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))[keep]
    x = sp.csr_matrix((np.ones(row_of.size, np.float32), (row_of, mapped[keep])), shape=(seen.shape[0], items.size))
    scores = np.asarray(x @ weights, dtype=np.float32)
    scores[row_of, mapped[keep]] = -np.inf  # seen
    candidates = np.where(np.isfinite(scores), np.broadcast_to(items, scores.shape), -1)
    width = min(k, items.size)
    return pad_to(*best_per_row(candidates, scores, width), k)


def implicit_neighbours(user_items: sp.csr_matrix, kind: str, k: int, allowed: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item-kNN neighbours from implicit's BM25 / cosine recommenders (K = k + 1), the item
    itself, blocked items and non-positive similarities left out, ties by item."""
    model = (BM25Recommender if kind == "bm25" else CosineRecommender)(K=k + 1, num_threads=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(user_items.tocsr(), show_progress=False)
    sim = model.similarity.tocoo()
    keep = (sim.row != sim.col) & allowed[sim.col] & (sim.data > 0)
    row, col, val = sim.row[keep], sim.col[keep].astype(np.int64), sim.data[keep].astype(np.float32)
    order = np.lexsort((col, -val, row))
    row, col, val = row[order], col[order], val[order]
    rank = np.arange(row.size) - np.searchsorted(row, row)
    top = rank < k
    n = user_items.shape[1]
    items = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    items[row[top], rank[top]] = col[top]
    scores[row[top], rank[top]] = val[top]
    return items, scores


def recent_items(user_idx: np.ndarray, item_idx: np.ndarray, when: np.ndarray, n_users: int, r: int) -> np.ndarray:
    """Each user's r most recent distinct items by `when` (ties by item), -1 padded: pandas sorts."""
    import pandas as pd

    frame = pd.DataFrame({"u": user_idx, "i": item_idx, "t": when})
    frame = frame.sort_values(["u", "t", "i"], ascending=[True, False, True], kind="stable")
    frame = frame.drop_duplicates(["u", "i"])
    frame["pos"] = frame.groupby("u", sort=False).cumcount()
    frame = frame[frame["pos"] < r]
    out = np.full((n_users, r), -1, np.int64)
    out[frame["u"].to_numpy(), frame["pos"].to_numpy()] = frame["i"].to_numpy()
    return out


def fusion(items_of: list[np.ndarray], relevant_keys: np.ndarray, n_items: int, k: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The choice's union of the sources' lists (contrib, cand, hit) by sorts over the rows, as
    recall.evaluate.choose built it before compiled.fusion_table."""
    from recall.kernel.blend import RRF_OFFSET

    items = np.hstack([a[:, :k] for a in items_of])
    source = np.hstack([np.full(a[:, :k].shape, s, np.int64) for s, a in enumerate(items_of)])
    rank = np.hstack([np.broadcast_to(np.arange(a[:, :k].shape[1]), a[:, :k].shape) for a in items_of])
    order = np.argsort(items, axis=1, kind="stable")
    items, source, rank = (np.take_along_axis(a, order, 1) for a in (items, source, rank))
    first = np.ones(items.shape, bool)
    first[:, 1:] = items[:, 1:] != items[:, :-1]
    slot = np.cumsum(first, axis=1) - 1
    width = int(slot.max()) + 1 if slot.size else 0
    u, c = np.nonzero(items >= 0)
    contrib = np.zeros((items.shape[0], width, len(items_of)), np.float32)
    contrib[u, slot[u, c], source[u, c]] = 1.0 / (RRF_OFFSET + 1 + rank[u, c])
    cand = np.full((items.shape[0], width), -1, np.int64)
    cand[u, slot[u, c]] = items[u, c]
    hit = in_keys(relevant_keys, np.arange(items.shape[0])[:, None], cand, n_items)
    return contrib, cand, hit


def blend_hits(contrib: np.ndarray, hit: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Per row: the hits with a positive score among the k best of the weighted blend, by numpy's
    argpartition (the choice's selection before compiled.hits_at_k)."""
    fused = contrib @ weights.astype(np.float32)
    if fused.shape[1] > k:
        top = np.argpartition(-fused, k - 1, axis=1)[:, :k]
        fused, hit = np.take_along_axis(fused, top, 1), np.take_along_axis(hit, top, 1)
    return (hit & (fused > 0)).sum(axis=1)


def popularity_scores(user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray | None, n_items: int, end_us: int,
                      half_life_days: float) -> np.ndarray:
    """Per item, distinct users (each user's latest row decayed): pandas groupby and bincount."""
    import pandas as pd

    from recall.model.matrix import US_PER_DAY

    frame = pd.DataFrame({"u": user_idx, "i": item_idx})
    if half_life_days > 0 and ts is not None:
        frame["t"] = ts
        last = frame.groupby(["u", "i"], sort=False)["t"].max()
        age = np.maximum(end_us - last.to_numpy(), 0) / US_PER_DAY
        return np.bincount(last.index.get_level_values("i"), weights=np.exp2(-age / half_life_days), minlength=n_items)
    pairs = frame.drop_duplicates()
    return np.bincount(pairs["i"].to_numpy(), minlength=n_items).astype(np.float64)
