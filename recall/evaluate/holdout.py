"""The holdout evaluation: lists of users held out, from a model fitted without what they did
next, scored per source, merged, and against the popularity baseline.

An engine fits its model on the training part of its split and hands over a HoldoutSet; from
there everything is the shared kernel on the driver, the same for every engine.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from loguru import logger

from recall.evaluate.choose import blend_of, fusion, halves, search_weights
from recall.evaluate.metrics import Relevant, ranking_metrics, relevant_rows, user_metrics
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

    def recalls(self, lists: np.ndarray) -> np.ndarray:
        """Per evaluated user: recall@k of their list."""
        return user_metrics(lists, self.evaluated, self.relevant, self.side.n_items, self.k)["recall"]

    def subset(self, rows: np.ndarray) -> HoldoutSet:
        """The same set restricted to the evaluated users at `rows`."""
        return dataclasses.replace(self, evaluated=self.evaluated[rows])

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


def holdout_metrics(held: HoldoutSet, how: Blend, choose: bool, seed: int,
                    fixed: Blend | None = None) -> tuple[Holdout, Blend]:
    """Score the blend's sources, the merged list and the popularity baseline; with `choose`, the
    weights (and which of `how.sources` take part) are chosen on half of the users first, every
    figure but `choosing` is measured on the other half, and `fixed` (default: `how`) is scored
    there too for comparison. Returns the record and the blend."""
    lists = held.source_lists(how.sources)
    rows = np.arange(held.evaluated.size)
    chosen, choosing, fixed_scores = how, None, None
    if choose:
        rows_choose, rows = halves(held.evaluated.size, seed)
        _, keys, count = relevant_rows(held.evaluated, held.relevant, held.side.n_items)
        fused = fusion(lists, keys, count, held.side.n_items, held.k, held.threads)
        chosen = blend_of(search_weights(fused.take(rows_choose)))
        part = held.subset(rows_choose)
        choosing = part.score(part.merged(take(lists, rows_choose), chosen))
    report, mine = held.subset(rows), take(lists, rows)
    merged, baseline = report.merged(mine, chosen), report.baseline()
    if choose:
        fixed_scores = report.score(report.merged(mine, fixed or how))
    result = Holdout(k=held.k, split=held.description, train_rows=held.train_rows,
                     relevant_pairs=int(held.relevant.user.size), users_evaluated=int(held.evaluated.size),
                     sources={name: report.score(c.items) for name, c in mine.items()},
                     popular_baseline=report.score(baseline), merged=report.score(merged),
                     users_choosing=int(held.evaluated.size - rows.size) if choose else 0,
                     users_reporting=int(rows.size), choosing=choosing, fixed_default=fixed_scores,
                     vs_popular=paired(report.recalls(merged), report.recalls(baseline)))
    logger.info(f"holdout ({held.description}): merged recall@{held.k} {result.merged.recall:.4f}, "
                f"popular baseline {result.popular_baseline.recall:.4f}; "
                + ", ".join(f"{n} {m.recall:.4f}" for n, m in result.sources.items())
                + (f"; blend chosen on {result.users_choosing} users (recall there {choosing.recall:.4f}), "
                   f"reported on {result.users_reporting}: {describe(chosen)}; fixed default weights "
                   f"{fixed_scores.recall:.4f}" if choose else ""))
    return result, chosen


def take(lists: dict[str, Candidates], rows: np.ndarray) -> dict[str, Candidates]:
    return {n: Candidates(c.source, c.items[rows], c.scores[rows]) for n, c in lists.items()}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """The mean per-user difference a - b with its standard error: how far apart two lists are on
    the same users, and how sure that is."""
    diff = a - b
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("inf")
    return {"difference": round(float(diff.mean()), 6), "se": round(se, 6), "users": int(diff.size)}


def describe(how: Blend) -> str:
    return ", ".join(f"{n} {how.weights.get(n, 0):g}" for n in how.sources)
