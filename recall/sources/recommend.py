"""The candidate kernel: a user batch's u2i lists from the item side, a pure function.

The nightly run (every engine), the holdout evaluation, `recall serve` and the nearline refresh
all call these, so what is measured is what is served.
"""
from __future__ import annotations

import numpy as np

from recall.kernel.blend import Blend, blend, top_up
from recall.kernel.keys import in_keys
from recall.kernel.rows import allowed_seen_counts
from recall.kernel.state import Candidates, ItemSide, Merged, UserBatch
from recall.sources import CODE, FALLBACK, SOURCES


def recommend(side: ItemSide, batch: UserBatch, how: Blend, k: int, threads: int = 1) -> Merged:
    """Each user's u2i list: the blend of its sources, topped up from the fallback to exactly
    min(k, unseen allowed items) rows."""
    return merge(side, batch, source_lists(side, batch, how.sources, k, threads), how, k, threads)


def source_lists(side: ItemSide, batch: UserBatch, names: tuple[str, ...] | list[str], k: int,
                 threads: int = 1) -> list[Candidates]:
    """Each named source's own top-k (unseen, allowed) for the batch."""
    return [Candidates(CODE[name], *SOURCES[name].candidates(side, batch, k, threads)) for name in names]


def merge(side: ItemSide, batch: UserBatch, lists: list[Candidates], how: Blend, k: int, threads: int = 1) -> Merged:
    """Blend per-source lists (in `how.sources` order) and top up from the fallback."""
    merged = blend(lists, list(how.sources), k, how, batch.n_items, threads)
    return top_up(merged, side.popular, CODE[FALLBACK], batch, target_lengths(side, batch, k), k)


def target_lengths(side: ItemSide, batch: UserBatch, k: int) -> np.ndarray:
    """What every list must hold: min(k, the user's unseen allowed items)."""
    return np.minimum(k, side.allowed_count - allowed_seen_counts(batch, side.allowed))


def contract_violation(side: ItemSide, batch: UserBatch, merged: Merged, k: int) -> str | None:
    """DESIGN guarantee 3 for one batch: None when it holds, else what is wrong and for whom."""
    lengths = merged.lengths()
    target = target_lengths(side, batch, k)
    valid = merged.items >= 0
    if (lengths != target).any():
        row = int(np.flatnonzero(lengths != target)[0])
        return f"user index {batch.users[row]}: {lengths[row]} rows, expected {target[row]}"
    if merged.items.shape[1] > k:
        return f"lists of {merged.items.shape[1]} > k = {k}"
    if not np.isfinite(merged.scores[valid]).all():
        return "non-finite scores"
    if (merged.source[valid] < 0).any():
        return "rows without a source"
    items = merged.items
    seen = in_keys(batch.seen_keys, np.arange(batch.size)[:, None], items, batch.n_items)
    if seen.any():
        return f"user index {batch.users[np.flatnonzero(seen.any(axis=1))[0]]}: recommends a seen item"
    if not side.allowed[items[valid]].all():
        return "recommends a blocklisted item"
    ordered = np.sort(items, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        return "an item twice in one list"
    return None
