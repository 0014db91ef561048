"""`popular`: items by distinct users over the window (the fallback every list is topped up from)."""
from __future__ import annotations

import numpy as np

from recall.kernel.rows import from_ranking
from recall.kernel.state import ItemSide, UserBatch
from recall.sources.base import Lists, Source


def candidates(side: ItemSide, batch: UserBatch, k: int, threads: int) -> Lists:
    return from_ranking(side.popular, batch, np.full(batch.size, k))


SOURCE = Source("popular", label="popular", default_weight=0.1, candidates=candidates)
