"""Id maps, interaction weighting and the user x item CSR matrix implicit trains on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight

from recall.arrays import distinct
from recall.spec.sections import ModelSection

US_PER_DAY = 86_400 * 1_000_000


@dataclass
class IdMap:
    """Sorted distinct ids in their input type; index i is row/column i of the matrix."""

    values: pa.Array

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def of(cls, arr: pa.Array) -> IdMap:
        uniq = pc.unique(arr)
        return cls(uniq.take(pc.sort_indices(uniq)))

    def index_of(self, arr: pa.Array) -> np.ndarray:
        """Index of each id, -1 where unknown."""
        if len(arr) == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.type != self.values.type:
            try:
                arr = arr.cast(self.values.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return np.full(len(arr), -1, dtype=np.int64)
        pos = pc.index_in(arr, value_set=self.values)
        return np.asarray(pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass
class Interactions:
    """Rows of the log as matrix coordinates, with their time and weight."""

    users: IdMap
    items: IdMap
    user_idx: np.ndarray  # int32
    item_idx: np.ndarray  # int32
    ts: np.ndarray | None  # int64 UTC microseconds
    weight: np.ndarray  # float64

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.users), len(self.items)

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.users, self.items, self.user_idx[mask], self.item_idx[mask],
                            None if self.ts is None else self.ts[mask], self.weight[mask])


def reencode(inter: Interactions) -> Interactions:
    """Fresh id maps holding only the users and items present in `inter` (e.g. a training split)."""
    kept_users, kept_items = distinct(inter.user_idx), distinct(inter.item_idx)
    users = IdMap(inter.users.values.take(pa.array(kept_users)))
    items = IdMap(inter.items.values.take(pa.array(kept_items)))
    return Interactions(users, items, renumber(inter.user_idx, kept_users, len(inter.users)),
                        renumber(inter.item_idx, kept_items, len(inter.items)), inter.ts, inter.weight)


def renumber(idx: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
    """Each index's position among `kept` (the sorted distinct indices in use, of n): a table
    lookup, where a search per row cost a second on 5M rows."""
    position = np.zeros(n, np.int32)
    position[kept] = np.arange(kept.size, dtype=np.int32)
    return position[idx]


def decayed(weight: np.ndarray, ts: np.ndarray | None, now_us: int, half_life_days: float) -> np.ndarray:
    """Halve a row's weight every `half_life_days` of age; off when 0 or without time."""
    if half_life_days <= 0 or ts is None:
        return weight
    age_days = np.maximum(now_us - ts, 0) / US_PER_DAY
    return weight * np.exp2(-age_days / half_life_days)


def to_csr(inter: Interactions, weight: np.ndarray | None = None) -> sp.csr_matrix:
    """users x items, repeated (user, item) pairs summed, float32, sorted indices."""
    w = inter.weight if weight is None else weight
    m = sp.coo_matrix((w.astype(np.float64), (inter.user_idx, inter.item_idx)), shape=inter.shape).tocsr()
    m.sum_duplicates()
    m.sort_indices()
    m.eliminate_zeros()
    return m.astype(np.float32)


def confidence(user_items: sp.csr_matrix, spec: ModelSection) -> sp.csr_matrix:
    """The `r` of implicit's confidence 1 + alpha * r, after the spec's weighting."""
    if spec.weighting == "log":
        out = user_items.copy()
        out.data = np.log1p(out.data).astype(np.float32)
        return out
    if spec.weighting == "bm25":
        # bm25 over item rows: damps heavy users (idf) and normalises per-item lengths,
        # the orientation of implicit's own lastfm recipe.
        weighted = bm25_weight(user_items.T.tocoo(), K1=spec.bm25_k1, B=spec.bm25_b)
        out = weighted.T.tocsr().astype(np.float32)
        # idf turns negative for a user who saw nearly every item of a tiny catalogue; implicit
        # would read that as negative feedback, so keep every observed pair a (weak) positive.
        np.maximum(out.data, np.float32(1e-3), out=out.data)
        out.sort_indices()
        return out
    return user_items


def seen_matrix(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """Binary users x items matrix of what each user interacted with."""
    seen = user_items.copy()
    seen.data = np.ones_like(seen.data, dtype=np.int8)
    return seen
