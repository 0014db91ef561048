"""What a candidate source is: its kernel (lists for a user batch, from the item side) and how the
local engine builds its part of the item side. Sources are looked up by name in the registry
(`recall.sources.SOURCES`); a new source is one module and one line there."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recall.kernel.state import ItemSide, UserBatch
from recall.spec.sections import JobSpec

if TYPE_CHECKING:  # the builders' types; a server answering with the kernels never loads them
    from recall.model.als import Factors
    from recall.model.matrix import Interactions


@dataclass(frozen=True)
class FitContext:
    """What building a source's item-side part may use: the window as the local engine holds it."""

    inter: "Interactions"
    counts: sp.csr_matrix  # users x items, summed weights (before the model's weighting)
    seen: sp.csr_matrix  # users x items, binary
    allowed: np.ndarray  # bool per item
    end_us: int  # "now" for time decay and recency
    spec: JobSpec
    threads: int
    factors: "Factors | None"  # ALS, trained when some source or table needs it


Lists = tuple[np.ndarray, np.ndarray]  # B x W items (int64, -1 pads) and scores (float32)


def never(spec: JobSpec) -> bool:
    return False


def no_recent(spec: JobSpec) -> int:
    return 0


@dataclass(frozen=True)
class Source:
    name: str
    default_weight: float  # its weight in the weighted blend when the spec gives none
    label: str  # what building its part is called in the step timings (e.g. "item_knn")
    # each user's top-k unseen allowed items: (item side, batch, k, threads) -> lists
    candidates: Callable[[ItemSide, UserBatch, int, int], Lists]
    # its part of the item side, and facts for the manifest; None: it needs no part of its own
    build: Callable[[FitContext], tuple[Any, dict]] | None = None
    needs_factors: Callable[[JobSpec], bool] = never  # whether ALS must be trained for it
    recent_depth: Callable[[JobSpec], int] = no_recent  # how many recent items per user it reads
