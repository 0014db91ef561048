"""A fitted recall model: the sources of a job wired together, answering for any batch of users.

The same object serves the holdout evaluation (trained on the split) and the published tables
(trained on the whole window), so what is measured is what is served.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from loguru import logger

from recall import candidates as cand
from recall.config import JobSpec
from recall.index import Searcher, approx_index, exact_index, normalised
from recall.matrix import US_PER_DAY, IdMap, Interactions, confidence, decayed, seen_matrix, to_csr
from recall.train import Factors, train_als

I2I_BATCH = 8192


@dataclass
class Recaller:
    spec: JobSpec
    inter: Interactions
    seen: sp.csr_matrix
    allowed: np.ndarray  # bool per item: not blocklisted
    popular: cand.Ranking
    factors: Factors | None = None
    searcher: Searcher | None = None
    search_mode: str = "exact"
    recent_popular: cand.Ranking | None = None
    neighbours: np.ndarray | None = None  # n_items x N ALS-cosine neighbours (int64, -1 pads): i2i
    similarity: np.ndarray | None = None
    related: tuple[np.ndarray, np.ndarray] | None = None  # neighbours the item_based source uses
    recent_items: np.ndarray | None = None  # n_users x R, most recent first
    info: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.seen.shape[0]

    @property
    def n_items(self) -> int:
        return self.seen.shape[1]

    @functools.cached_property
    def allowed_count(self) -> int:
        return int(self.allowed.sum())

    def batch(self, users: np.ndarray) -> cand.Batch:
        return cand.Batch(users.astype(np.int64), self.seen[users], self.n_items)

    def source_lists(self, batch: cand.Batch, k: int,
                     sources: list[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Each source's own top-k (unseen, allowed) for the batch: the spec's sources, or `sources`."""
        out = []
        for name in sources or self.spec.recall.u2i.sources:
            if name == "als":
                items, scores = cand.nearest_unseen(self.searcher, self.factors.users[batch.users], batch,
                                                    self.allowed, k)
            elif name == "popular":
                items, scores = cand.from_ranking(self.popular, batch, np.full(batch.size, k))
            elif name == "recent_popular":
                items, scores = cand.from_ranking(self.recent_popular, batch, np.full(batch.size, k))
            else:  # item_based
                items, scores = cand.item_based(*self.related, self.recent_items[batch.users], batch,
                                                self.allowed, k)
            out.append((name, items, scores))
        return out

    def recommend(self, users: np.ndarray, k: int | None = None) -> cand.Merged:
        """The merged u2i lists for `users`: blended sources topped up from the fallback."""
        k = k or self.spec.recall.u2i.k
        batch = self.batch(users)
        return self.merge(batch, self.source_lists(batch, k), k)

    def merge(self, batch: cand.Batch, lists: list[tuple[str, np.ndarray, np.ndarray]], k: int,
              blend: str | None = None, quotas: dict | None = None, weights: dict | None = None) -> cand.Merged:
        """Blend per-source lists (the spec's blend unless given) and top up from the fallback."""
        u2i = self.spec.recall.u2i
        merged = cand.blend(lists, k, blend or u2i.blend, u2i.quotas if quotas is None else quotas,
                            u2i.weights if weights is None else weights)
        allowed_seen = cand.allowed_seen_counts(batch, self.allowed)
        return cand.top_up(merged, self.popular, batch, self.allowed_count, allowed_seen, k)

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """i2i rows for `items`: top-k cosine neighbours among allowed items, itself excluded."""
        return self.neighbours[items, :k], self.similarity[items, :k]


def fit(inter: Interactions, spec: JobSpec, window_end_us: int, blocked: np.ndarray,
        show_progress: bool = False, need_i2i: bool = True) -> Recaller:
    """Train what the job's sources need and build the indexes over allowed items."""
    counts = to_csr(inter)
    seen = seen_matrix(counts)
    allowed = ~blocked
    popular_days = spec.recall.popular.days
    rec = Recaller(spec, inter, seen, allowed,
                   popularity(inter, allowed, window_end_us, popular_days, 0.0))
    sources = set(spec.recall.u2i.sources)
    if "recent_popular" in sources:
        rp = spec.recall.recent_popular
        rec.recent_popular = popularity(inter, allowed, window_end_us, rp.days, rp.half_life_days)
    wants_i2i = need_i2i and spec.recall.i2i.k > 0
    item_based = spec.recall.item_based
    als_related = "item_based" in sources and item_based.similarity == "als"
    if "item_based" in sources:
        rec.recent_items = recent_items(inter, item_based.recent_items)
        if not als_related:
            rec.related = cooccurrence_neighbours(counts, item_based.similarity, item_based.neighbours, allowed)
    if "als" in sources or als_related or wants_i2i:
        weights = decayed(inter.weight, inter.ts, window_end_us, spec.model.half_life_days)
        r = confidence(counts if weights is inter.weight else to_csr(inter, weights), spec.model)
        rec.factors = train_als(r, spec.model, show_progress=show_progress)
        allowed_idx = np.flatnonzero(allowed)
        if "als" in sources:
            rec.searcher, rec.search_mode = build_searcher(rec.factors.items, allowed_idx, spec)
            if rec.search_mode == "approx":
                rec.info["approx"] = approx_recall(rec, spec)
        if als_related or wants_i2i:
            depth = max(spec.recall.i2i.k if wants_i2i else 0, item_based.neighbours if als_related else 0)
            rec.neighbours, rec.similarity = cosine_neighbours(rec.factors.items, allowed_idx, depth)
            if als_related:
                rec.related = (rec.neighbours[:, :item_based.neighbours], rec.similarity[:, :item_based.neighbours])
    return rec


def build_searcher(item_vectors: np.ndarray, allowed_idx: np.ndarray, spec: JobSpec) -> tuple[Searcher, str]:
    u2i = spec.recall.u2i
    approx = u2i.search == "approx" or (u2i.search == "auto" and allowed_idx.size >= u2i.approx_min_items)
    if approx:
        return approx_index(item_vectors[allowed_idx], allowed_idx, u2i.nlist, u2i.nprobe,
                            spec.model.random_state, u2i.k), "approx"
    return exact_index(item_vectors[allowed_idx], allowed_idx), "exact"


def approx_recall(rec: Recaller, spec: JobSpec) -> dict:
    """Recall@k of the approximate u2i search against exact search, on a seeded sample of users.

    With `nprobe = 0` (automatic) the probed cells are doubled until the sample reaches
    `approx_target_recall` (or every cell is probed), so the recall holds whatever the factors.
    """
    u2i = spec.recall.u2i
    rng = np.random.default_rng(spec.model.random_state)
    users = np.sort(rng.choice(rec.n_users, min(u2i.approx_check_users, rec.n_users), replace=False))
    exact = exact_index(rec.factors.items[rec.allowed], np.flatnonzero(rec.allowed))
    batch = rec.batch(users)
    vectors = rec.factors.users[users]
    want, _ = cand.nearest_unseen(exact, vectors, batch, rec.allowed, u2i.k)
    keys = cand.dense_keys(want, rec.n_items)
    tried: dict[int, float] = {}

    def check(nprobe: int) -> float:
        rec.searcher.nprobe = nprobe
        got, _ = cand.nearest_unseen(rec.searcher, vectors, batch, rec.allowed, u2i.k)
        hits = int(cand.in_keys(keys, np.arange(users.size)[:, None], got, rec.n_items).sum())
        tried[nprobe] = round(hits / max(keys.size, 1), 4)
        return tried[nprobe]

    nprobe, nlist = rec.searcher.nprobe, rec.searcher.nlist
    if u2i.nprobe:
        recall = check(nprobe)
    else:
        # the fewest cells that reach the target: double from the default until it is met,
        # then bisect between the last miss and the first hit
        miss, hit = 0, None
        while True:
            if check(nprobe) >= u2i.approx_target_recall:
                hit = nprobe
            else:
                miss = nprobe
            if hit is None and nprobe >= nlist:
                break
            if hit is not None and hit - miss <= 1:
                break
            nprobe = min(nlist, 2 * nprobe) if hit is None else (miss + hit) // 2
        rec.searcher.nprobe = hit or nlist
        recall = tried[rec.searcher.nprobe]
    tried_list = [{"nprobe": n, "recall_at_k": r} for n, r in tried.items()]
    info = {"recall_at_k": round(recall, 4), "k": u2i.k, "users_checked": int(users.size),
            "nlist": rec.searcher.nlist, "nprobe": rec.searcher.nprobe, "tried": tried_list}
    logger.info(f"approximate u2i search (IVF nlist {info['nlist']}, nprobe {info['nprobe']}): "
                f"recall@{u2i.k} {recall:.4f} against exact search on {users.size} users")
    return info


def cosine_neighbours(item_vectors: np.ndarray, allowed_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every item among allowed items, the item itself excluded."""
    unit = normalised(item_vectors)
    searcher = exact_index(unit[allowed_idx], allowed_idx)
    n = len(unit)
    items = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    for start in range(0, n, I2I_BATCH):
        rows = np.arange(start, min(start + I2I_BATCH, n))
        items[rows], scores[rows] = cand.ranked_neighbours(searcher, unit[rows], rows, k)
    return items, scores


def cooccurrence_neighbours(user_items: sp.csr_matrix, kind: str, k: int,
                            allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item-kNN neighbours from co-occurrence (implicit's BM25 / cosine recommenders)."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    model = (BM25Recommender if kind == "bm25" else CosineRecommender)(K=k + 1, num_threads=1)
    with warnings.catch_warnings():
        # implicit transposes internally and then warns about its own COO matrix
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(user_items.tocsr(), show_progress=False)
    sim = model.similarity.tocoo()
    keep = (sim.row != sim.col) & allowed[sim.col] & (sim.data > 0)
    row, col, val = sim.row[keep], sim.col[keep].astype(np.int64), sim.data[keep].astype(np.float32)
    order = np.lexsort((col, -val, row))
    row, col, val = row[order], col[order], val[order]
    rank = np.arange(row.size) - np.searchsorted(row, row)
    top = rank < k
    n = user_items.shape[1]
    items = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    items[row[top], rank[top]] = col[top]
    scores[row[top], rank[top]] = val[top]
    return items, scores


def popularity(inter: Interactions, allowed: np.ndarray, end_us: int, days: int,
               half_life_days: float) -> cand.Ranking:
    """Allowed items by distinct users (each user's latest interaction decayed), best first.

    Distinct users rather than raw weight, so one heavy user cannot make an item popular.
    """
    n_items = len(inter.items)
    mask = np.ones(len(inter.user_idx), dtype=bool)
    if days > 0 and inter.ts is not None:
        mask = inter.ts >= end_us - days * US_PER_DAY
    frame = pd.DataFrame({"u": inter.user_idx[mask], "i": inter.item_idx[mask]})
    if half_life_days > 0 and inter.ts is not None:
        frame["t"] = inter.ts[mask]
        last = frame.groupby(["u", "i"], sort=False)["t"].max()
        age = np.maximum(end_us - last.to_numpy(), 0) / US_PER_DAY
        score = np.bincount(last.index.get_level_values("i"), weights=np.exp2(-age / half_life_days),
                            minlength=n_items)
    else:
        pairs = frame.drop_duplicates()
        score = np.bincount(pairs["i"].to_numpy(), minlength=n_items).astype(np.float64)
    items = np.flatnonzero(allowed)
    order = np.lexsort((items, -score[items]))
    return cand.Ranking(items[order].astype(np.int64), score[items][order].astype(np.float32))


def recent_items(inter: Interactions, r: int) -> np.ndarray:
    """Each user's r most recent distinct items (by time, else by weight), -1 padded."""
    n_users = len(inter.users)
    order_key = inter.ts if inter.ts is not None else inter.weight
    frame = pd.DataFrame({"u": inter.user_idx, "i": inter.item_idx, "t": order_key})
    frame = frame.sort_values(["u", "t", "i"], ascending=[True, False, True], kind="stable")
    frame = frame.drop_duplicates(["u", "i"])
    frame["pos"] = frame.groupby("u", sort=False).cumcount()
    frame = frame[frame["pos"] < r]
    out = np.full((n_users, r), -1, np.int64)
    out[frame["u"].to_numpy(), frame["pos"].to_numpy()] = frame["i"].to_numpy()
    return out


def blocked_items(items: IdMap, ids: list, where: str) -> np.ndarray:
    """Mask over the item map of blocklisted ids (ids of the other type are converted when exact)."""
    mask = np.zeros(len(items), dtype=bool)
    if not ids:
        return mask
    if pa.types.is_integer(items.values.type):
        conv = [int(x) for x in ids if isinstance(x, int) or (isinstance(x, str) and x.lstrip("-").isdigit())]
        arr = pa.array(conv, pa.int64())
    else:
        arr = pa.array([str(x) for x in ids], pa.string())
    if len(arr) < len(ids):
        logger.warning(f"{where}: {len(ids) - len(arr)} blocklist ids are not {items.values.type} ids and were ignored")
    pos = items.index_of(arr)
    mask[pos[pos >= 0]] = True
    return mask
