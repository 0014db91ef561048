"""`als`: top-k inner product of the user's ALS vector over the item factors, seen and blocklisted
items skipped inside the search; exact, or an inverted file (IVF) whose recall is checked."""
from __future__ import annotations

import dataclasses

import numpy as np
from loguru import logger

from recall.kernel.keys import dense_keys, in_keys
from recall.kernel.rows import pad_to
from recall.kernel.search import search
from recall.kernel.state import ItemIndex, ItemSide, UserBatch
from recall.sources.base import FitContext, Lists, Source
from recall.spec.sections import JobSpec, U2ISection


def build(ctx: FitContext) -> tuple[ItemIndex, dict]:
    from recall.model.index import approx_index, exact_index  # FAISS: for building only

    u2i = ctx.spec.recall.u2i
    allowed_idx = np.flatnonzero(ctx.allowed)
    vectors = ctx.factors.items[allowed_idx]
    if not approximate(u2i, allowed_idx.size):
        return exact_index(vectors, allowed_idx), {"mode": "exact"}
    index = approx_index(vectors, allowed_idx, u2i.nlist, u2i.nprobe, ctx.spec.model.random_state, ctx.threads, u2i.k)
    check = approx_recall(index, ctx, u2i)
    return dataclasses.replace(index, nprobe=check["nprobe"]), {"mode": "approx", "approx": check}


def approximate(u2i: U2ISection, allowed_items: int) -> bool:
    return u2i.search == "approx" or (u2i.search == "auto" and allowed_items >= u2i.approx_min_items)


def candidates(side: ItemSide, batch: UserBatch, k: int, threads: int) -> Lists:
    """Seen items are excluded inside the search, so nothing is over-fetched or filtered after;
    exact search never comes back short, approximate search may (the top-up fills the rest)."""
    index: ItemIndex = side.parts["als"]
    return pad_to(*search(index, batch.factors, k, exclude=batch.seen, threads=threads), k)


def approx_recall(index: ItemIndex, ctx: FitContext, u2i: U2ISection) -> dict:
    """Recall@k of the approximate search against exact search on a seeded sample of users.

    With `nprobe = 0` (automatic) the probed cells are doubled until the sample reaches
    `approx_target_recall` (or every cell is probed), then bisected back to the fewest cells that
    reach it, so the recall holds whatever the factors look like.
    """
    n_users = ctx.seen.shape[0]
    rng = np.random.default_rng(ctx.spec.model.random_state)
    users = np.sort(rng.choice(n_users, min(u2i.approx_check_users, n_users), replace=False))
    from recall.model.index import exact_index

    exact = exact_index(index.vectors, index.item_idx)
    vectors, seen = ctx.factors.users[users], ctx.seen[users]
    want, _ = search(exact, vectors, u2i.k, exclude=seen, threads=ctx.threads)
    keys = dense_keys(want, len(ctx.allowed))
    tried: dict[int, float] = {}

    def check(nprobe: int) -> float:
        got, _ = search(index, vectors, u2i.k, exclude=seen, threads=ctx.threads, nprobe=nprobe)
        hits = int(in_keys(keys, np.arange(users.size)[:, None], got, len(ctx.allowed)).sum())
        tried[nprobe] = round(hits / max(keys.size, 1), 4)
        return tried[nprobe]

    nprobe, nlist = index.nprobe, index.nlist
    if u2i.nprobe:
        check(nprobe)
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
        nprobe = hit or nlist
    info = {"recall_at_k": tried[nprobe], "k": u2i.k, "users_checked": int(users.size), "nlist": nlist,
            "nprobe": nprobe, "tried": [{"nprobe": n, "recall_at_k": r} for n, r in tried.items()]}
    logger.info(f"approximate u2i search (IVF nlist {nlist}, nprobe {nprobe}): "
                f"recall@{u2i.k} {info['recall_at_k']:.4f} against exact search on {users.size} users")
    return info


def needs_factors(spec: JobSpec) -> bool:
    return True


SOURCE = Source("als", label="als_index", default_weight=1.0, candidates=candidates, build=build,
                needs_factors=needs_factors)
