"""`item_based`: the neighbours of each user's most recent items, scored by summed similarity.

Neighbours come from item-kNN on co-occurrence (implicit's BM25 or cosine) or from the cosine of
the ALS item factors.
"""
from __future__ import annotations

import numpy as np

from recall.kernel.keys import in_keys
from recall.kernel.rows import best_per_row, sum_repeats
from recall.kernel.state import ItemSide, Neighbours, UserBatch
from recall.sources.base import FitContext, Lists, Source
from recall.spec.sections import JobSpec


def build(ctx: FitContext) -> tuple[Neighbours, dict]:
    from recall.model.itemknn import cooccurrence_neighbours, cosine_neighbours  # implicit: for building only

    options = ctx.spec.recall.item_based
    if options.similarity == "als":
        return cosine_neighbours(ctx.factors.items, ctx.allowed, options.neighbours, ctx.threads), {}
    return cooccurrence_neighbours(ctx.counts, options.similarity, options.neighbours, ctx.allowed), {}


def candidates(side: ItemSide, batch: UserBatch, k: int, threads: int) -> Lists:
    """Unseen allowed neighbours of each user's recent items, by summed similarity."""
    near: Neighbours = side.parts["item_based"]
    recent = batch.recent
    nb = near.items[np.maximum(recent, 0)].reshape(batch.size, -1)  # B x (R * N)
    sim = near.scores[np.maximum(recent, 0)].reshape(batch.size, -1).astype(np.float64)
    from_recent = np.repeat(recent >= 0, near.items.shape[1], axis=1)
    valid = from_recent & (nb >= 0) & (sim > 0)
    valid &= side.allowed[np.maximum(nb, 0)]
    valid &= ~in_keys(batch.seen_keys, np.arange(batch.size)[:, None], nb, batch.n_items)
    items, totals, _ = sum_repeats(np.where(valid, nb, -1), np.where(valid, sim, 0.0))
    return best_per_row(items, totals.astype(np.float32), k)


def needs_factors(spec: JobSpec) -> bool:
    return spec.recall.item_based.similarity == "als"


def recent_depth(spec: JobSpec) -> int:
    return spec.recall.item_based.recent_items


SOURCE = Source("item_based", label="item_knn", default_weight=0.5, candidates=candidates, build=build,
                needs_factors=needs_factors, recent_depth=recent_depth)
