"""What the candidate kernel works on: the item side of a fitted model and a batch of users.

Both are plain numpy (no library objects), so a batch can be answered in another process: a
Spark executor, a server worker, the nearline refresh. Item indices are positions in the run's
item map; -1 marks a pad in every fixed-width matrix.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recall.kernel.keys import csr_keys


@dataclass(frozen=True)
class Ranking:
    """A global ordering of allowed items, best first."""

    items: np.ndarray  # int64
    scores: np.ndarray  # float32


@dataclass(frozen=True)
class Neighbours:
    """Per item, its nearest items, best first: n_items x N (int64, -1 pads; float32 scores)."""

    items: np.ndarray
    scores: np.ndarray

    def head(self, n: int) -> Neighbours:
        return Neighbours(self.items[:, :n], self.scores[:, :n])


@dataclass(frozen=True)
class ItemIndex:
    """Items by position for top-k inner-product search: exact (every item) or an inverted file
    (IVF) whose cell c holds positions offsets[c]:offsets[c + 1]; cells are probed by their
    centroids, which live in the augmented space (vectors scaled to norm <= 1, plus one dimension)."""

    item_idx: np.ndarray  # int64: position -> item index
    vectors: np.ndarray  # float32, row i at position i
    centroids: np.ndarray | None = None  # IVF: nlist x (dim + 1) float32
    offsets: np.ndarray | None = None  # IVF: nlist + 1 int64
    nprobe: int = 0  # IVF: cells scanned per query
    # exact: the largest norm from each position on (n + 1); IVF: each cell's largest norm. A
    # query stops scanning where its norm times this cannot reach its k-th best score.
    bounds: np.ndarray | None = None

    @property
    def approx(self) -> bool:
        return self.centroids is not None

    @property
    def nlist(self) -> int:
        return 0 if self.offsets is None else len(self.offsets) - 1

    @property
    def size(self) -> int:
        return len(self.item_idx)

    @property
    def mode(self) -> str:
        return "approx" if self.approx else "exact"


@dataclass(frozen=True)
class ItemSide:
    """Everything about items the sources need to answer for any user batch."""

    allowed: np.ndarray  # bool per item: not blocklisted
    popular: Ranking  # the fallback every list is topped up from
    parts: Mapping[str, Any] = field(default_factory=dict)  # per source: its own state (by name)
    factors: np.ndarray | None = None  # ALS item factors (n_items x f), when trained

    @property
    def n_items(self) -> int:
        return len(self.allowed)

    @functools.cached_property
    def allowed_count(self) -> int:
        return int(self.allowed.sum())


@dataclass(frozen=True)
class UserBatch:
    """What the sources need to know about a batch of users."""

    users: np.ndarray  # int64 row labels (user indices; anything for folded-in users)
    seen: sp.csr_matrix  # len(users) x n_items, sorted indices: excluded from every list
    factors: np.ndarray | None = None  # ALS user factors, len(users) x f
    recent: np.ndarray | None = None  # len(users) x R, each user's most recent items first, -1 pads

    @property
    def size(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return self.seen.shape[1]

    @functools.cached_property
    def seen_keys(self) -> np.ndarray:
        """Sorted keys (batch row * n_items + item) of what each user saw."""
        return csr_keys(self.seen)


@dataclass(frozen=True)
class UserSide:
    """Every user of the window, for the batches of a run."""

    seen: sp.csr_matrix  # n_users x n_items, sorted indices
    factors: np.ndarray | None = None
    recent: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.seen.shape[0]

    def batch(self, users: np.ndarray) -> UserBatch:
        users = np.asarray(users, dtype=np.int64)
        return UserBatch(users, self.seen[users],
                         None if self.factors is None else self.factors[users],
                         None if self.recent is None else self.recent[users])

    def head(self, n: int) -> UserSide:
        """The first n users (the benchmark's memory check)."""
        return UserSide(self.seen[:n], None if self.factors is None else self.factors[:n],
                        None if self.recent is None else self.recent[:n])


@dataclass(frozen=True)
class Candidates:
    """One source's list for a batch: B x W items (unique per row, best first, pads last)."""

    source: int  # the source's code (its position in the registry)
    items: np.ndarray  # int64
    scores: np.ndarray  # float32


@dataclass(frozen=True)
class Merged:
    """The blended lists of a batch: B x k, -1 pads at the end of short rows."""

    items: np.ndarray  # int64
    scores: np.ndarray  # float32
    source: np.ndarray  # int8 source codes, -1 on pads

    def lengths(self) -> np.ndarray:
        return (self.items >= 0).sum(axis=1)
