"""Holdout splits of a window: the last days, each user's last fraction, or a seeded random one."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recall.evaluate.metrics import Relevant
from recall.kernel.keys import csr_keys, in_keys
from recall.model.matrix import US_PER_DAY, Interactions, reencode, seen_matrix, to_csr
from recall.spec.sections import EvaluateSection


@dataclass(frozen=True)
class Split:
    train: Interactions  # its own id maps: only what the model may know
    relevant: Relevant  # train user and item indices of the held-out pairs
    description: str
    cutoff_us: int  # "now" for the model trained on the split (decay, recent popularity)


def holdout_split(inter: Interactions, spec: EvaluateSection, end_us: int, seed: int = 0) -> Split | None:
    """Temporal: the last holdout_days are held out. Per user: each user's last fraction."""
    temporal = spec.split == "temporal" or (spec.split == "auto" and inter.ts is not None)
    if temporal and inter.ts is None:
        return None
    cutoff_us = end_us
    if temporal:
        cutoff_us = end_us - spec.holdout_days * US_PER_DAY
        test = inter.ts >= cutoff_us
        description = f"temporal: last {spec.holdout_days} day(s) held out"
    elif spec.split == "user_random":
        shuffled = np.random.default_rng(seed).permutation(len(inter.user_idx))
        test = last_fraction(inter, spec.holdout_fraction, when=shuffled)
        description = f"per user: a random {spec.holdout_fraction:.0%} of each user's interactions held out (seed {seed})"
    else:
        test = last_fraction(inter, spec.holdout_fraction)
        order = "time" if inter.ts is not None else "log order"
        description = f"per user: last {spec.holdout_fraction:.0%} of each user's interactions (by {order}) held out"
    if test.all() or not test.any():
        return None
    train = reencode(inter.take(~test))
    if len(train.items) < 2:
        return None
    # relevant pairs: distinct (user, item) in the holdout, for users known in training,
    # for items the user did not already interact with in training
    tu = train.users.index_of(inter.users.values.take(inter.user_idx[test]))
    ti = train.items.index_of(inter.items.values.take(inter.item_idx[test]))
    known_user = tu >= 0
    pairs = pd.DataFrame({"u": tu[known_user], "i": ti[known_user],
                          "raw": inter.item_idx[test][known_user]}).drop_duplicates(["u", "raw"])
    seen = seen_matrix(to_csr(train))
    keys = csr_keys(seen)
    fresh = ~in_keys(keys, pairs["u"].to_numpy(), pairs["i"].to_numpy(), seen.shape[1])
    pairs = pairs[fresh]
    if pairs.empty:
        return None
    return Split(train, Relevant(pairs["u"].to_numpy(np.int64), pairs["i"].to_numpy(np.int64)), description, cutoff_us)


def last_fraction(inter: Interactions, fraction: float, when: np.ndarray | None = None) -> np.ndarray:
    """Mask of each user's last `fraction` of rows, ordered by `when` (default: time, else log order)."""
    n = len(inter.user_idx)
    if when is None:
        when = inter.ts if inter.ts is not None else np.arange(n)
    order = np.lexsort((np.arange(n), when, inter.user_idx))
    users = inter.user_idx[order]
    start = np.searchsorted(users, users, side="left")
    size = np.searchsorted(users, users, side="right") - start
    pos = np.arange(n) - start
    held = np.floor(size * fraction).astype(np.int64)
    test = np.empty(n, dtype=bool)
    test[order] = (size >= 2) & (pos >= size - held)
    return test


def blocked_of(inter: Interactions, train: Interactions, blocked: np.ndarray) -> np.ndarray:
    """The blocklist mask carried over to a re-encoded subset's item map."""
    return blocked[inter.items.index_of(train.items.values)]
