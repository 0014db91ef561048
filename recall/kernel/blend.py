"""Blending per-source lists into one list per user, and the top-up from the fallback ranking.

A Blend is a value: the mode, the sources in order, their weights and quotas. It is what a run
records in its manifest and what a server or an executor is given; nothing here mutates it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from recall.kernel.rows import compact, first_occurrence, from_ranking
from recall.kernel.state import Candidates, Merged, Ranking, UserBatch

RRF_OFFSET = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
Mode = Literal["ordered", "quota", "weighted"]


@dataclass(frozen=True)
class Blend:
    """How per-source lists become one: `ordered` (each source fills what the previous left),
    `quota` (source s first gets round(quotas[s] * k) slots, the rest fill in order) or `weighted`
    (reciprocal-rank fusion: an item scores the sum of weights[s] / (60 + rank in s))."""

    mode: Mode
    sources: tuple[str, ...]
    weights: dict[str, float] = field(default_factory=dict)
    quotas: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "sources": list(self.sources), "weights": dict(self.weights),
                "quotas": dict(self.quotas)}

    @classmethod
    def from_dict(cls, data: dict) -> Blend:
        return cls(data["mode"], tuple(data["sources"]), dict(data.get("weights") or {}),
                   dict(data.get("quotas") or {}))


def blend(lists: list[Candidates], names: list[str], k: int, how: Blend, n_items: int | None = None,
          threads: int = 1) -> Merged:
    """Merge per-source lists (`names[i]` is the name of lists[i]) into at most k unique items per user
    (`n_items`, the catalogue size, lets a weighted blend run compiled; see fuse)."""
    if len(lists) == 1:  # one source's list is already unique, best first, pads last
        only = lists[0]
        items, scores = only.items[:, :k], only.scores[:, :k].astype(np.float32)
        code = np.where(items >= 0, only.source, -1).astype(np.int8)
        return Merged(*compact(items >= 0, k, items, scores, code, fills=(-1, -np.inf, -1)))
    if how.mode == "weighted":
        return fuse(lists, [how.weights.get(n, 0.0) for n in names], k, n_items, threads)
    items = np.hstack([c.items for c in lists])
    scores = np.hstack([c.scores for c in lists]).astype(np.float32)
    source = np.hstack([np.full(c.items.shape, c.source, np.int8) for c in lists])
    valid = (items >= 0) & first_occurrence(items)
    if how.mode == "quota" and how.quotas:
        first = np.zeros(items.shape, dtype=bool)
        for name, c in zip(names, lists):
            mine = valid & (source == c.source)
            slots = int(round(how.quotas.get(name, 0.0) * k))
            first |= mine & (np.cumsum(mine, axis=1) <= slots)
        order = np.argsort(~first, axis=1, kind="stable")  # quota picks first, then the rest in order
        items, scores, source, valid = (np.take_along_axis(a, order, 1) for a in (items, scores, source, valid))
    return Merged(*compact(valid, k, items, scores, source, fills=(-1, -np.inf, -1)))


def fuse(lists: list[Candidates], weights: list[float], k: int, n_items: int | None = None,
         threads: int = 1) -> Merged:
    """Weighted reciprocal-rank fusion; a row's source is the source contributing most to its score.

    With the catalogue size `n_items`, the kernels in use (recall.kernel.backend: compiled
    fuse_top_k by default); without, the plain kernel's sums with sorts (what the compiled one is
    checked against)."""
    from recall.kernel import plain
    from recall.kernel.backend import kernels

    contrib = np.concatenate([weight / (RRF_OFFSET + 1 + np.arange(c.items.shape[1]))
                              for c, weight in zip(lists, weights)])
    code = np.concatenate([np.full(c.items.shape[1], c.source, np.int8) for c in lists])
    run = plain if n_items is None else kernels()
    return Merged(*run.fuse(np.hstack([c.items for c in lists]), contrib, code, len(lists), n_items, k, threads))


def top_up(merged: Merged, fallback: Ranking, fallback_code: int, batch: UserBatch,
           target: np.ndarray, k: int) -> Merged:
    """Fill every row to its target length (min(k, unseen allowed items)) from the fallback."""
    need = np.maximum(target - merged.lengths(), 0)
    if not need.any():
        return merged
    extra, extra_scores = from_ranking(fallback, batch, need, taken=merged.items)
    items = np.hstack([merged.items, extra])
    scores = np.hstack([merged.scores, extra_scores])
    source = np.hstack([merged.source, np.where(extra >= 0, fallback_code, -1).astype(np.int8)])
    return Merged(*compact(items >= 0, k, items, scores, source, fills=(-1, -np.inf, -1)))
