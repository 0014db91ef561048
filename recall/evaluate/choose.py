"""Choosing the blend on the holdout: which sources take part and with what weights.

The evaluated users are split in two, seeded: the blend is chosen on one part and reported on the
other, so the reported figure never scores the users it was chosen on. The search re-blends the
sources' precomputed lists (no retraining): each user's candidates are the union of the sources'
lists with each source's reciprocal-rank contribution, so the weighted blend's recall@k for any
weights is a product and a partial sort, and coordinate ascent over a grid of weights costs
milliseconds a step. The chosen blend is then scored with the real kernel on the reporting users.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall.kernel.blend import RRF_OFFSET, Blend
from recall.kernel.keys import in_keys
from recall.kernel.state import Candidates

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # the grid each source's weight is chosen from


@dataclass(frozen=True)
class Fusion:
    """Per evaluated user, the union of the sources' lists: U x C candidates."""

    names: tuple[str, ...]
    contrib: np.ndarray  # U x C x S float32: 1 / (61 + rank) where the source lists the item, else 0
    hit: np.ndarray  # U x C bool: the candidate is a relevant held-out item
    denominator: np.ndarray  # U: min(k, relevant items)
    k: int

    def recall(self, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per user of `rows`: recall@k of the weighted blend with `weights` (one per source)."""
        fused = self.contrib[rows] @ weights.astype(np.float32)
        if fused.shape[1] > self.k:
            top = np.argpartition(-fused, self.k - 1, axis=1)[:, :self.k]
            fused, hit = np.take_along_axis(fused, top, 1), np.take_along_axis(self.hit[rows], top, 1)
        else:
            hit = self.hit[rows]
        return (hit & (fused > 0)).sum(axis=1) / self.denominator[rows]


def fusion(lists: dict[str, Candidates], relevant_keys: np.ndarray, relevant_count: np.ndarray,
           n_items: int, k: int) -> Fusion:
    """Precompute the union of the lists of every evaluated user. `relevant_keys` are the sorted
    keys row * n_items + item of the held-out pairs, `relevant_count` each row's number of them."""
    names = tuple(lists)
    items = np.hstack([lists[n].items[:, :k] for n in names])
    source = np.hstack([np.full(lists[n].items[:, :k].shape, s, np.int64) for s, n in enumerate(names)])
    rank = np.hstack([np.broadcast_to(np.arange(lists[n].items[:, :k].shape[1]), lists[n].items[:, :k].shape)
                      for n in names])
    order = np.argsort(items, axis=1, kind="stable")
    items, source, rank = (np.take_along_axis(a, order, 1) for a in (items, source, rank))
    first = np.ones(items.shape, bool)
    first[:, 1:] = items[:, 1:] != items[:, :-1]
    slot = np.cumsum(first, axis=1) - 1  # each entry's candidate position in its row
    width = int(slot.max()) + 1 if slot.size else 0
    u, c = np.nonzero(items >= 0)
    contrib = np.zeros((items.shape[0], width, len(names)), np.float32)
    contrib[u, slot[u, c], source[u, c]] = 1.0 / (RRF_OFFSET + 1 + rank[u, c])
    cand = np.full((items.shape[0], width), -1, np.int64)
    cand[u, slot[u, c]] = items[u, c]
    hit = in_keys(relevant_keys, np.arange(items.shape[0])[:, None], cand, n_items)
    return Fusion(names, contrib, hit, np.minimum(k, np.maximum(relevant_count, 1)).astype(np.float64), k)


def search_weights(f: Fusion, rows: np.ndarray, recall_of: dict[str, float]) -> dict[str, float]:
    """Weights by coordinate ascent from the best single source: one source's weight at a time over
    WEIGHTS, keeping what raises the mean recall on `rows`, until nothing does. Deterministic."""
    names = sorted(f.names, key=lambda n: (-recall_of[n], n))
    index = {n: f.names.index(n) for n in names}
    weights = np.zeros(len(f.names))
    weights[index[names[0]]] = 1.0
    best = f.recall(weights, rows).mean()
    improved = True
    while improved:
        improved = False
        for name in names:
            for value in WEIGHTS:
                trial = weights.copy()
                trial[index[name]] = value
                if value == weights[index[name]] or not trial.any():
                    continue
                score = f.recall(trial, rows).mean()
                if score > best + 1e-12:
                    weights, best, improved = trial, score, True
    return {n: float(weights[index[n]]) for n in names if weights[index[n]] > 0}


def blend_of(weights: dict[str, float]) -> Blend:
    """The weighted blend of the sources that got weight, heaviest first."""
    order = sorted(weights, key=lambda n: (-weights[n], n))
    return Blend("weighted", tuple(order), {n: weights[n] for n in order})


def halves(n: int, seed: int, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of n evaluated users: (the rows that choose, the rows that report), sorted."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])
