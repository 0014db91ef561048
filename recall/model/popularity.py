"""Item rankings by distinct users over (part of) the window, and each user's recent items."""
from __future__ import annotations

import numpy as np

from recall.kernel.compiled import first_pairs, latest_items
from recall.kernel.state import Ranking
from recall.model.matrix import US_PER_DAY, Interactions


def popularity(inter: Interactions, allowed: np.ndarray, end_us: int, days: int,
               half_life_days: float) -> Ranking:
    """Allowed items by distinct users (each user's latest interaction decayed), best first.

    Distinct users rather than raw weight, so one heavy user cannot make an item popular. The
    decayed terms are summed in the order the pairs first appear in the log (as pandas grouped
    them), so the float64 scores, and the order of near ties, stay what they were.
    """
    n_items = len(inter.items)
    mask = np.ones(len(inter.user_idx), dtype=bool)
    if days > 0 and inter.ts is not None:
        mask = inter.ts >= end_us - days * US_PER_DAY
    users, items = inter.user_idx[mask], inter.item_idx[mask]
    decay = half_life_days > 0 and inter.ts is not None
    when = inter.ts[mask] if decay else np.zeros(0, np.int64)
    pairs, last = first_pairs(users, items, when, len(inter.users), n_items)
    if decay:
        age = np.maximum(end_us - last, 0) / US_PER_DAY
        score = np.bincount(items[pairs], weights=np.exp2(-age / half_life_days), minlength=n_items)
    else:
        score = np.bincount(items[pairs], minlength=n_items).astype(np.float64)
    return ranking(score, allowed)


def ranking(score: np.ndarray, allowed: np.ndarray) -> Ranking:
    """Allowed items by descending score, ties by item index."""
    items = np.flatnonzero(allowed)
    order = np.lexsort((items, -score[items]))
    return Ranking(items[order].astype(np.int64), score[items][order].astype(np.float32))


def recent_items(inter: Interactions, r: int) -> np.ndarray:
    """Each user's r most recent distinct items (by time, else by weight; ties by item), -1 padded."""
    order_key = inter.ts if inter.ts is not None else inter.weight
    return latest_items(inter.user_idx, inter.item_idx, order_key, len(inter.users), r)
