"""`recent_popular`: items by distinct recent users over the last `days`, each user's latest
interaction decayed with `half_life_days` (what trend-driven catalogues need)."""
from __future__ import annotations

import numpy as np

from recall.kernel.rows import from_ranking
from recall.kernel.state import ItemSide, Ranking, UserBatch
from recall.sources.base import FitContext, Lists, Source


def build(ctx: FitContext) -> tuple[Ranking, dict]:
    from recall.model.popularity import popularity  # recall.model (implicit): for building only

    options = ctx.spec.recall.recent_popular
    return popularity(ctx.inter, ctx.allowed, ctx.end_us, options.days, options.half_life_days), {}


def candidates(side: ItemSide, batch: UserBatch, k: int, threads: int) -> Lists:
    return from_ranking(side.parts["recent_popular"], batch, np.full(batch.size, k))


SOURCE = Source("recent_popular", label="recent_popular", default_weight=0.25, candidates=candidates, build=build)
