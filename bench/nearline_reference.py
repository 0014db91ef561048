"""What the nightly kernel gives a set of users with the item side fixed: the reference a nearline
refresh's lists are held to (`python -m bench.nearline`, tests/test_nearline.py).

Built from the nightly run's own data path, not the refresh's: the window extended to the newest
input day read, validated and encoded by `recall.ingest.prepare` (one window, as the next nightly
run would read it), weighted by `recall.model.matrix` (`decayed`, `to_csr`, `confidence`), the
users' recent items picked by `recall.model.popularity.recent_items`; each user's vector solved
against the published item factors (the least squares of ALS's user step with the items fixed:
`recall.kernel.foldin.user_vector`, or implicit's own `recalculate_user`); then the candidate
kernel `recommend()` with the published run's sources, blend and k.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recall.ingest.prepare import prepare
from recall.ingest.window import Window
from recall.kernel.foldin import FoldIn, user_vector
from recall.kernel.state import UserBatch
from recall.model.matrix import IdMap, Interactions, confidence, decayed, to_csr
from recall.model.popularity import recent_items
from recall.sources.recommend import recommend
from recall.spec.sections import JobSpec
from recall.store.item_side import PublishedSide


@dataclasses.dataclass(frozen=True)
class Expected:
    users: pa.Array  # sorted user ids
    items: np.ndarray  # len(users) x k item indices of the published item side, -1 pads
    scores: np.ndarray
    source: np.ndarray
    vectors: np.ndarray  # the users' factors


def expected_lists(spec: JobSpec, root: Path, date: str, last_day: str, published: PublishedSide,
                   users: pa.Array, solver: str = "foldin", threads: int = 1) -> Expected:
    """The lists of `users` (those active after `date`'s window, up to `last_day`)."""
    if spec.model.weighting == "bm25":
        raise NotImplementedError("bm25 weighs by the training window's item statistics; the reference does log, none")
    start, end = dt.date.fromisoformat(date), dt.date.fromisoformat(last_day)
    days = spec.job.lookback_days + (end - start).days
    input_spec = dataclasses.replace(spec.input, require_run_date=False)
    data = prepare(dataclasses.replace(spec, input=input_spec), Window(end, days, spec.job.timezone), root)
    inter = data.inter
    mine = IdMap.of(users)
    user = mine.index_of(inter.users.values)[inter.user_idx]
    item = IdMap(published.item_ids).index_of(inter.items.values)[inter.item_idx]
    keep = (user >= 0) & (item >= 0)
    ts = None if inter.ts is None else inter.ts[keep]
    rows = Interactions(mine, IdMap(published.item_ids), user[keep].astype(np.int32), item[keep].astype(np.int32),
                        ts, inter.weight[keep])
    window_end = Window(start, spec.job.lookback_days, spec.job.timezone).bounds_us()[1]
    now = max(window_end, int(ts.max())) if ts is not None and ts.size else window_end
    counts = to_csr(rows, decayed(rows.weight, rows.ts, now, spec.model.half_life_days))
    r = confidence(counts, spec.model)
    fold = FoldIn.of(published.side.factors, published.fold, published.weight_sum)
    vectors = solve(fold, r, solver)
    seen = counts.copy()
    seen.data = np.ones_like(seen.data, dtype=np.int8)
    recent = recent_items(rows, published.recent_items) if published.recent_items else None
    batch = UserBatch(np.arange(len(mine), dtype=np.int64), seen, vectors, recent)
    merged = recommend(published.side, batch, published.blend, published.k, threads)
    return Expected(mine.values, merged.items, merged.scores, merged.source, vectors)


def solve(fold: FoldIn, r: sp.csr_matrix, solver: str) -> np.ndarray:
    """Each row's least-squares user vector against the fixed item factors."""
    if solver == "implicit":
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        s = fold.settings
        with threadpool_limits(1, "blas"):
            peer = AlternatingLeastSquares(factors=s.factors, regularization=s.regularization, alpha=s.alpha,
                                           random_state=0)
            peer.item_factors = np.array(fold.factors)  # implicit writes into its own arrays
            peer.user_factors = np.zeros((r.shape[0], s.factors), np.float32)
            return np.asarray(peer.recalculate_user(np.arange(r.shape[0]), r), np.float32)
    out = np.zeros((r.shape[0], fold.settings.factors), np.float32)
    for u in range(r.shape[0]):
        row = r[u]
        if row.nnz:
            out[u] = user_vector(fold, row.indices.astype(np.int64), row.data)
    return out
