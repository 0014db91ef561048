"""Choosing the blend on the holdout: which sources take part and with what weights.

The evaluated users are split in two, seeded: the blend is chosen on one part and reported on the
other, so the reported figure never scores the users it was chosen on. The search re-blends the
sources' precomputed lists (no retraining): each user's candidates are the union of the sources'
lists with each source's reciprocal-rank contribution, so the weighted blend's recall@k for any
weights is a product and a partial sort, and coordinate ascent over a grid of weights costs
milliseconds a step. The chosen blend is then scored with the real kernel on the reporting users.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recall.kernel import compiled
from recall.kernel.blend import RRF_OFFSET, Blend
from recall.kernel.pool import in_chunks
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
    threads: int = 1

    def take(self, rows: np.ndarray) -> Fusion:
        """The same candidates for the users at `rows` (copied once: every trial reads them)."""
        return dataclasses.replace(self, contrib=self.contrib[rows], hit=self.hit[rows],
                                   denominator=self.denominator[rows])

    def recall(self, weights: np.ndarray) -> np.ndarray:
        """Per user: recall@k of the weighted blend with `weights` (one per source).

        The top k of each user's fused scores are counted compiled; a user whose count depends on
        which of the scores tied at the k-th are taken gets numpy's argpartition, the selection
        this has always made, so the choice stays what it was."""
        fused = self.contrib @ weights.astype(np.float32)
        hits = np.empty(fused.shape[0], np.int64)
        unsure = np.empty(fused.shape[0], bool)

        def run(a: int, b: int) -> None:
            hits[a:b], unsure[a:b] = compiled.hits_at_k(fused[a:b], self.hit[a:b], self.k)

        in_chunks(fused.shape[0], 2048, self.threads, run)
        rows = np.flatnonzero(unsure)
        if rows.size:
            top = np.argpartition(-fused[rows], self.k - 1, axis=1)[:, :self.k]
            taken, hit = np.take_along_axis(fused[rows], top, 1), np.take_along_axis(self.hit[rows], top, 1)
            hits[rows] = (hit & (taken > 0)).sum(axis=1)
        return hits / self.denominator


def fusion(lists: dict[str, Candidates], relevant_keys: np.ndarray, relevant_count: np.ndarray,
           n_items: int, k: int, threads: int = 1) -> Fusion:
    """Precompute the union of the lists of every evaluated user (compiled.fusion_table).
    `relevant_keys` are the sorted keys row * n_items + item of the held-out pairs,
    `relevant_count` each row's number of them."""
    names = tuple(lists)
    widths = [lists[n].items[:, :k].shape[1] for n in names]
    items = np.ascontiguousarray(np.hstack([lists[n].items[:, :k] for n in names]), dtype=np.int64)
    source = np.repeat(np.arange(len(names), dtype=np.int64), widths)
    rank = np.concatenate([np.arange(w, dtype=np.int64) for w in widths])
    contrib, _, hit = compiled.fusion_table(items, source, rank, len(names), RRF_OFFSET,
                                            np.ascontiguousarray(relevant_keys, dtype=np.int64), n_items)
    return Fusion(names, contrib, hit, np.minimum(k, np.maximum(relevant_count, 1)).astype(np.float64), k, threads)


def search_weights(f: Fusion) -> dict[str, float]:
    """Weights by coordinate ascent from the best single source: one source's weight at a time over
    WEIGHTS, keeping what raises the mean recall on f's users, until nothing does. Deterministic."""
    alone = {n: f.recall(np.eye(len(f.names))[i]).mean() for i, n in enumerate(f.names)}
    names = sorted(f.names, key=lambda n: (-alone[n], n))
    index = {n: f.names.index(n) for n in names}
    weights = np.zeros(len(f.names))
    weights[index[names[0]]] = 1.0
    best = f.recall(weights).mean()
    improved = True
    while improved:
        improved = False
        for name in names:
            for value in WEIGHTS:
                trial = weights.copy()
                trial[index[name]] = value
                if value == weights[index[name]] or not trial.any():
                    continue
                score = f.recall(trial).mean()
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
