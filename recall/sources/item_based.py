"""`item_based`: the neighbours of each user's most recent items, scored by summed similarity.

Neighbours come from item-kNN on co-occurrence (implicit's BM25 or cosine) or from the cosine of
the ALS item factors.
"""
from __future__ import annotations

from recall.kernel.backend import kernels
from recall.kernel.state import ItemSide, Neighbours, UserBatch
from recall.sources.base import FitContext, Lists, Source
from recall.spec.sections import JobSpec


def build(ctx: FitContext) -> tuple[Neighbours, dict]:
    from recall.model.itemknn import cooccurrence_neighbours, cosine_neighbours  # implicit: for building only

    options = ctx.spec.recall.item_based
    if options.similarity == "als":
        return cosine_neighbours(ctx.factors.items, ctx.allowed, options.neighbours, ctx.threads), {}
    return cooccurrence_neighbours(ctx.counts, options.similarity, options.neighbours, ctx.allowed,
                                   options.max_user_items, ctx.threads), {}


def candidates(side: ItemSide, batch: UserBatch, k: int, threads: int) -> Lists:
    """Unseen allowed neighbours of each user's recent items, by summed similarity."""
    near: Neighbours = side.parts["item_based"]
    return kernels().item_based(near.items, near.scores, batch.recent, batch.seen, side.allowed, k, threads)


def needs_factors(spec: JobSpec) -> bool:
    return spec.recall.item_based.similarity == "als"


def recent_depth(spec: JobSpec) -> int:
    return spec.recall.item_based.recent_items


SOURCE = Source("item_based", label="item_knn", default_weight=0.5, candidates=candidates, build=build,
                needs_factors=needs_factors, recent_depth=recent_depth)
