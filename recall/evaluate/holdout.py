"""The holdout evaluation: lists of users held out, from a model fitted without what they did
next, scored per source, merged, and against the popularity baseline.

An engine fits its model on the training part of its split and hands over a HoldoutSet; from
there everything is the shared kernel on the driver, the same for every engine.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from loguru import logger

from recall.evaluate.metrics import Relevant, ranking_metrics
from recall.kernel.blend import Blend
from recall.kernel.rows import from_ranking
from recall.kernel.state import Candidates, ItemSide, UserBatch, UserSide
from recall.sources.recommend import merge, source_lists
from recall.store.records import Holdout, Scores


@dataclass(frozen=True)
class HoldoutSet:
    """Evaluated users with the model fitted on the rest of the window, ready to score lists."""

    side: ItemSide  # fitted on the training part
    users: UserSide  # every training user
    evaluated: np.ndarray  # user indices scored (sorted)
    relevant: Relevant  # held-out pairs, in the training part's indices
    description: str
    train_rows: int
    k: int
    threads: int = 1
    batch_size: int = 8192

    def score(self, lists: np.ndarray) -> Scores:
        return ranking_metrics(lists, self.evaluated, self.relevant, self.side.n_items, self.k)

    def batches(self) -> Iterator[tuple[slice, UserBatch]]:
        for start in range(0, self.evaluated.size, self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield rows, self.users.batch(self.evaluated[rows])

    def source_lists(self, names: tuple[str, ...] | list[str], side: ItemSide | None = None) -> dict[str, Candidates]:
        """Each named source's top-k for every evaluated user (from `side`, default the fitted one)."""
        parts: dict[str, list[Candidates]] = {}
        for _, batch in self.batches():
            for name, c in zip(names, source_lists(side or self.side, batch, names, self.k, self.threads)):
                parts.setdefault(name, []).append(c)
        return {name: Candidates(p[0].source, np.vstack([c.items for c in p]), np.vstack([c.scores for c in p]))
                for name, p in parts.items()}

    def merged(self, lists: dict[str, Candidates], how: Blend) -> np.ndarray:
        """The merged lists (blend + fallback top-up) of precomputed source lists."""
        out = []
        for rows, batch in self.batches():
            chunk = [Candidates(lists[n].source, lists[n].items[rows], lists[n].scores[rows]) for n in how.sources]
            out.append(merge(self.side, batch, chunk, how, self.k).items)
        return np.vstack(out)

    def baseline(self) -> np.ndarray:
        return np.vstack([from_ranking(self.side.popular, batch, np.full(batch.size, self.k))[0]
                          for _, batch in self.batches()])


def holdout_metrics(held: HoldoutSet, how: Blend) -> Holdout:
    """Score each source of the blend, the merged list and the popularity baseline."""
    lists = held.source_lists(how.sources)
    result = Holdout(k=held.k, split=held.description, train_rows=held.train_rows,
                     relevant_pairs=int(held.relevant.user.size), users_evaluated=int(held.evaluated.size),
                     sources={name: held.score(c.items) for name, c in lists.items()},
                     popular_baseline=held.score(held.baseline()), merged=held.score(held.merged(lists, how)))
    logger.info(f"holdout ({held.description}): merged recall@{held.k} {result.merged.recall:.4f}, "
                f"popular baseline {result.popular_baseline.recall:.4f}; "
                + ", ".join(f"{n} {m.recall:.4f}" for n, m in result.sources.items()))
    return result
