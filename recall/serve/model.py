"""A built run's item side and fold-in model (recall.serve.build.save_side), loaded on the
snapshot's first fold-in, which a server that only looks rows up never pays. The kernel is the
nightly run's own (recall.sources.recommend), so a fold-in answers what the nightly run would have
published; it runs with the plain kernels (recall.kernel.backend), which answer one user with the
compiled kernels' bits without loading numba and LLVM (about 75 MB a worker: `python -m bench.foldin`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recall.arrays import mapped


@dataclass(frozen=True)
class Folded:
    """A fold-in's answer: item indices, scores and source codes in rank order."""

    items: np.ndarray
    scores: np.ndarray
    source: np.ndarray


class Model:
    """The run's item side, fold-in and blend, opened once, on first use (thread-safe)."""

    def __init__(self, folder: Path, meta: dict) -> None:
        self.folder, self.meta = folder, meta
        self._loaded: tuple[Any, Any, Any] | None = None
        self._lock = threading.Lock()

    def load(self) -> tuple[Any, Any, Any]:
        """(ItemSide, FoldIn or None, Blend), opened from the run's arrays on the first call."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = open_model(self.folder, self.meta)
        return self._loaded

    @property
    def allowed_count(self) -> int:
        return self.load()[0].allowed_count

    def recommend(self, history: np.ndarray, weights: np.ndarray | None, k: int) -> Folded:
        """The u2i list the nightly kernel gives a user with this history (item indices, most
        recent first; weights per item or None)."""
        from recall.kernel.backend import plain_kernels
        from recall.kernel.foldin import fold_batch
        from recall.sources.recommend import recommend

        side, fold, how = self.load()
        batch = fold_batch(fold, [(history, weights)], int(self.meta["settings"]["recent_items"]), side.n_items)
        with plain_kernels():
            merged = recommend(side, batch, how, k)
        valid = merged.items[0] >= 0
        return Folded(merged.items[0][valid], merged.scores[0][valid], merged.source[0][valid])


def open_model(folder: Path, meta: dict) -> tuple[Any, Any, Any]:
    from recall.kernel.blend import Blend
    from recall.kernel.foldin import FoldIn, FoldSettings

    side = open_side(folder, meta["side"])
    settings = meta["settings"]
    fold = None
    if settings.get("model") and side.factors is not None:
        weight_sum = folder / "side.weight_sum.npy"
        fold = FoldIn.of(side.factors, FoldSettings(**settings["model"]),
                         mapped(weight_sum) if weight_sum.exists() else None)
    return side, fold, Blend.from_dict(settings["blend"])


def open_side(folder: Path, layout: dict):
    """The item side from its arrays (recall.serve.build.save_side)."""
    from recall.kernel.state import ItemIndex, ItemSide, Neighbours, Ranking
    from recall.sources.ease import Ease

    kinds = {"Ranking": Ranking, "Neighbours": Neighbours, "ItemIndex": ItemIndex, "Ease": Ease}
    factors = mapped(folder / "side.factors.npy") if layout["factors"] else None
    parts = {}
    for name, entry in layout["parts"].items():
        if entry.get("factors_order"):  # recall.serve.build.factors_order; no bounds: plain kernels need none
            parts[name] = ItemIndex(np.arange(len(factors), dtype=np.int64), factors)
            continue
        cls = kinds[entry["kind"]]
        arrays = {f: mapped(folder / f"side.{name}.{f}.npy") for f in cls.__dataclass_fields__
                  if (folder / f"side.{name}.{f}.npy").exists()}
        parts[name] = cls(**arrays, **entry["scalars"])
    popular = Ranking(mapped(folder / "side.popular.items.npy"), mapped(folder / "side.popular.scores.npy"))
    return ItemSide(mapped(folder / "side.allowed.npy"), popular, parts, factors)
