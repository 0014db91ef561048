"""Training on Spark: MLlib's implicit ALS with the spec's settings converted to its model, and
every source's item-side part built from Spark aggregates into the plain-numpy ItemSide that the
candidate kernel reads (on the driver, then broadcast).

implicit (what the local engine trains, and what [model] means) against Spark MLlib's ALS:

  implicit:  weight of an observed pair  c = alpha * r,       ridge  lambda * |x_u|^2
  Spark:     weight of an observed pair  c = 1 + alpha_s * s, ridge  lambda_s * n_u * |x_u|^2

(r: the weighted interaction, after decay and `weighting`; implicit's solver adds (c - 1) y y^T
on top of Y^T Y and c y to the right-hand side, so c itself is the weight; Spark's adds alpha_s s
and 1 + alpha_s s, with s the rating it is given, and scales the ridge of each row by its number
of ratings n_u (ALS-WR).) Hence:

  rating  s = alpha * r - 1  with alpha_s = 1: the same weight, exactly, whenever alpha * r >= 1;
          below that Spark cannot weigh a positive pair under 1, so s is floored at a tiny
          positive value (weight ~1, still a positive preference);
  lambda_s = lambda * (n_users + n_items) / (2 * nnz): the same total penalty
          lambda (sum |x_u|^2 + sum |y_i|^2) when factor norms are alike, since sum n_u = sum n_i
          = nnz; heavy rows are regularised more than in implicit, light rows less.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from loguru import logger
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window as W

from recall.engines.spark.rows import user_batch
from recall.engines.spark.tables import partitions
from recall.kernel.state import ItemSide, Neighbours, Ranking
from recall.model.als import Factors
from recall.model.itemknn import cosine_neighbours
from recall.model.matrix import US_PER_DAY
from recall.model.popularity import ranking
from recall.sources import SOURCES, FitContext
from recall.sources import ease
from recall.sources.als import approximate
from recall.spec.sections import JobSpec, ModelSection
from recall.timer import Timer

MIN_RATING = 1e-6  # Spark's rating for pairs whose implicit weight alpha * r is below 1


@dataclass(frozen=True)
class Interactions:
    """An encoded window on Spark (or a training split of it): u, i, ts, w, row."""

    frame: DataFrame
    n_users: int
    n_items: int
    timed: bool


@dataclass(frozen=True)
class SparkModel:
    side: ItemSide  # on the driver; broadcast to the candidate tasks
    # u, user_id, seen (sorted item indices), factors, recent: one row per user, range-partitioned
    # by u into the candidate tasks and sorted within, persisted
    users: DataFrame
    n_users: int
    item_factors: np.ndarray | None  # for the i2i table
    search: dict  # the als source's search facts, for the manifest
    weight_sum: np.ndarray | None = None  # per item: summed confidence weight (the published item side)


def als_settings(model: ModelSection, n_users: int, n_items: int, nnz: int) -> dict:
    """Spark ALS parameters equivalent to the spec's implicit ones (the module's docstring)."""
    return {"rank": model.factors, "maxIter": model.iterations, "alpha": 1.0, "implicitPrefs": True,
            "regParam": model.regularization * (n_users + n_items) / (2.0 * max(nnz, 1)),
            "seed": model.random_state, "nonnegative": False, "checkpointInterval": 10}


def summed(data: Interactions, end_us: int, half_life_days: float) -> DataFrame:
    """(u, i, r): each pair's weights summed, each decayed by its age when a half-life is set."""
    w = F.col("w")
    if half_life_days > 0 and data.timed:
        age = F.greatest(F.lit(end_us) - F.col("ts"), F.lit(0)) / US_PER_DAY
        w = w * F.pow(F.lit(2.0), -age / half_life_days)
    return data.frame.groupBy("u", "i").agg(F.sum(w).alias("r"))


def bm25(pairs: DataFrame, value: str, n_items: int, k1: float, b: float) -> DataFrame:
    """implicit's bm25_weight over item rows (users are the terms), as the local engine applies it:
    r * (k1 + 1) / (k1 * length_norm[item] + r) * idf[user]."""
    per_item = pairs.groupBy("i").agg(F.sum(value).alias("_len"))
    average = per_item.agg(F.sum("_len")).first()[0] / n_items
    per_user = pairs.groupBy("u").agg((F.log(F.lit(float(n_items))) - F.log1p(F.count(F.lit(1)))).alias("_idf"))
    norm = (1.0 - b) + b * F.col("_len") / average
    weighted = F.col(value) * (k1 + 1.0) / (k1 * norm + F.col(value)) * F.col("_idf")
    return (pairs.join(per_item, "i").join(per_user, "u")
            .select("u", "i", weighted.alias(value)))


def confidence(pairs: DataFrame, model: ModelSection, n_items: int) -> DataFrame:
    """(u, i, r): the `r` of implicit's confidence after the spec's weighting (recall.model.matrix)."""
    if model.weighting == "log":
        return pairs.select("u", "i", F.log1p("r").alias("r"))
    if model.weighting == "bm25":
        weighted = bm25(pairs, "r", n_items, model.bm25_k1, model.bm25_b)
        return weighted.select("u", "i", F.greatest("r", F.lit(1e-3)).alias("r"))
    return pairs


def train_als(spark: SparkSession, data: Interactions, spec: JobSpec,
              end_us: int) -> tuple[DataFrame, np.ndarray, np.ndarray]:
    """MLlib ALS on the window: user factors (u, factors) as a DataFrame, item factors on the
    driver, and each item's summed confidence weight (what fold-in's bm25 needs, as published)."""
    r = confidence(summed(data, end_us, spec.model.half_life_days), spec.model, data.n_items).cache()
    sums = r.groupBy("i").agg(F.sum("r").alias("s")).toArrow()
    weight_sum = np.zeros(data.n_items, np.float32)
    weight_sum[sums.column("i").to_numpy()] = sums.column("s").to_numpy()
    ratings = r.select(F.col("u"), F.col("i"),
                       F.greatest(F.col("r") * spec.model.alpha - 1.0, F.lit(MIN_RATING)).alias("rating")).cache()
    nnz = ratings.count()
    params = als_settings(spec.model, data.n_users, data.n_items, nnz)
    blocks = spark.sparkContext.defaultParallelism
    logger.info(f"Spark ALS on {nnz} pairs: rank {params['rank']}, {params['maxIter']} iterations, "
                f"regParam {params['regParam']:.6g} (implicit's {spec.model.regularization:g}), rating alpha*r - 1 "
                f"(alpha {spec.model.alpha:g}), {blocks} blocks")
    als = ALS(userCol="u", itemCol="i", ratingCol="rating", numUserBlocks=blocks, numItemBlocks=blocks, **params)
    fitted = als.fit(ratings)
    items = fitted.itemFactors.toArrow()
    item_factors = np.zeros((data.n_items, spec.model.factors), np.float32)
    item_factors[items.column("id").to_numpy()] = vectors(items.column("features"), spec.model.factors)
    users = fitted.userFactors.select(F.col("id").alias("u"), F.col("features").alias("factors"))
    ratings.unpersist()
    r.unpersist()
    return users, item_factors, weight_sum


def vectors(column, width: int) -> np.ndarray:
    """A list<float> Arrow column as an n x width float32 matrix."""
    flat = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    return np.asarray(flat.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)


def popularity(data: Interactions, allowed: np.ndarray, end_us: int, days: int, half_life_days: float) -> Ranking:
    """recall.model.popularity.popularity on Spark: allowed items by distinct users (each user's
    latest interaction decayed), over the last `days` when the log has time."""
    frame = data.frame
    if days > 0 and data.timed:
        frame = frame.where(F.col("ts") >= end_us - days * US_PER_DAY)
    if half_life_days > 0 and data.timed:
        last = frame.groupBy("u", "i").agg(F.max("ts").alias("t"))
        age = F.greatest(F.lit(end_us) - F.col("t"), F.lit(0)) / US_PER_DAY
        scores = last.groupBy("i").agg(F.sum(F.pow(F.lit(2.0), -age / half_life_days)).alias("s"))
    else:
        scores = frame.select("u", "i").distinct().groupBy("i").agg(F.count(F.lit(1)).cast("double").alias("s"))
    got = scores.toArrow()
    score = np.zeros(data.n_items)
    score[got.column("i").to_numpy()] = got.column("s").to_numpy()
    return ranking(score, allowed)


def recent_items(data: Interactions, depth: int) -> DataFrame:
    """(u, recent): each user's `depth` most recent distinct items (by time, else by weight),
    latest first, ties by item index, as recall.model.popularity.recent_items."""
    key = "ts" if data.timed else "w"
    last = data.frame.groupBy("u", "i").agg(F.max(key).alias("t"))
    pos = F.row_number().over(W.partitionBy("u").orderBy(F.desc("t"), F.asc("i")))
    ranked = last.withColumn("pos", pos).where(F.col("pos") <= depth)
    return ranked.groupBy("u").agg(F.transform(F.array_sort(F.collect_list(F.struct("pos", "i"))),
                                               lambda s: s["i"]).alias("recent"))


def cooccurrence(data: Interactions, kind: str, k: int, allowed: np.ndarray, max_user_items: int = 0) -> Neighbours:
    """recall.model.itemknn.cooccurrence_neighbours on Spark: implicit's BM25 (K1 1.2, B 0.75) or
    cosine item-kNN on the summed weights: sim(i, j) = sum over users of x_ui x_uj, where x is the
    BM25-weighted or column-normalised matrix; the k + 1 best per item (itself included, as
    implicit keeps them), then itself, blocked items and non-positive scores out."""
    pairs = data.frame.groupBy("u", "i").agg(F.sum("w").alias("x"))
    if max_user_items > 0:  # each user's heaviest interactions only (recall.kernel.compiled.item_knn)
        heaviest = F.row_number().over(W.partitionBy("u").orderBy(F.desc("x"), F.asc("i")))
        pairs = pairs.withColumn("_r", heaviest).where(F.col("_r") <= max_user_items).drop("_r")
    if kind == "bm25":
        x = bm25(pairs, "x", data.n_items, 1.2, 0.75)
    else:
        norms = pairs.groupBy("i").agg(F.sqrt(F.sum(F.col("x") ** 2)).alias("_n"))
        x = pairs.join(norms, "i").select("u", "i", (F.col("x") / F.col("_n")).alias("x"))
    a, b = x.alias("a"), x.alias("b")
    sims = (a.join(b, "u").groupBy(F.col("a.i").alias("i"), F.col("b.i").alias("j"))
            .agg(F.sum(F.col("a.x") * F.col("b.x")).alias("s")))
    best = F.row_number().over(W.partitionBy("i").orderBy(F.desc("s"), F.asc("j")))
    top = sims.withColumn("pos", best).where(F.col("pos") <= k + 1).toArrow()
    row, col = top.column("i").to_numpy().astype(np.int64), top.column("j").to_numpy().astype(np.int64)
    val, pos = top.column("s").to_numpy().astype(np.float32), top.column("pos").to_numpy()
    keep = (row != col) & allowed[col] & (val > 0)
    row, col, val, pos = row[keep], col[keep], val[keep], pos[keep]
    order = np.lexsort((pos, row))
    row, col, val = row[order], col[order], val[order]
    rank = np.arange(row.size) - np.searchsorted(row, row)
    top_k = rank < k
    n = data.n_items
    items = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    items[row[top_k], rank[top_k]] = col[top_k]
    scores[row[top_k], rank[top_k]] = val[top_k]
    return Neighbours(items, scores)


def seen_rows(frame: DataFrame) -> DataFrame:
    """(u, seen): each user's distinct items, sorted (a CSR row once in Arrow)."""
    return frame.groupBy("u").agg(F.array_sort(F.collect_set("i")).alias("seen"))


def sample_users(spark: SparkSession, users: DataFrame, wanted: np.ndarray, factors: int,
                 n_items: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """Factors and seen rows of `wanted` user indices (sorted), collected to the driver."""
    chosen = spark.createDataFrame([(int(u),) for u in wanted], "u int")
    got = users.join(F.broadcast(chosen), "u").orderBy("u").toArrow()
    batch = user_batch(got, n_items, factors)
    return batch.factors, batch.seen


def fit_model(spark: SparkSession, data: Interactions, spec: JobSpec, end_us: int, allowed: np.ndarray,
              sources: tuple[str, ...], threads: int, timer: Timer, with_i2i: bool = True,
              user_ids: DataFrame | None = None) -> SparkModel:
    """What `sources` (and the i2i table) need, as the local engine's fit_model builds it; with
    `user_ids` (u, user_id) the user side is laid out for the u2i tasks."""
    with timer.step("popular"):
        popular = popularity(data, allowed, end_us, spec.recall.popular.days, 0.0)
    i2i_k = spec.recall.i2i.k if with_i2i else 0
    users = seen_rows(data.frame)
    item_factors = weight_sum = None
    if i2i_k or any(SOURCES[name].needs_factors(spec) for name in sources):
        with timer.step("als_fit"):
            user_factors, item_factors, weight_sum = train_als(spark, data, spec, end_us)
        users = users.join(user_factors, "u", "left")
    depth = max((SOURCES[name].recent_depth(spec) for name in sources), default=0)
    if depth:
        users = users.join(recent_items(data, depth), "u", "left")
    with timer.step("users"):
        if user_ids is not None:
            tasks = partitions(data.n_users, spec.spark.users_per_task, spark)
            users = users.join(user_ids, "u").repartitionByRange(tasks, "u").sortWithinPartitions("u")
        users = users.persist()
        n = users.count()
    parts, search = {}, {}
    for name in sources:
        if SOURCES[name].build is None:
            continue
        with timer.step(SOURCES[name].label):
            parts[name], facts = build_part(spark, name, data, users, spec, end_us, allowed, item_factors, threads)
        search.update({"u2i": facts.pop("mode"), **facts} if name == "als" else facts)
    side = ItemSide(allowed, popular, parts)  # the factors stay out of what the tasks are sent
    return SparkModel(side, users, n, item_factors, search, weight_sum)


def build_part(spark: SparkSession, name: str, data: Interactions, users: DataFrame, spec: JobSpec, end_us: int,
               allowed: np.ndarray, item_factors: np.ndarray | None, threads: int) -> tuple[object, dict]:
    """One source's part of the item side: the local builders where they need only the item side,
    Spark aggregates where they need the whole window."""
    if name == "als":
        # the approximate search's recall check scores a seeded sample of users, collected here
        # (the same users the local engine samples); exact search needs none
        u2i = spec.recall.u2i
        sample = np.zeros(0, np.int64)
        if approximate(u2i, int(allowed.sum())):
            rng = np.random.default_rng(spec.model.random_state)
            sample = np.sort(rng.choice(data.n_users, min(u2i.approx_check_users, data.n_users), replace=False))
        factors, seen = sample_users(spark, users, sample, spec.model.factors, data.n_items)
        ctx = FitContext(None, None, seen, allowed, end_us, spec, threads, Factors(factors, item_factors))
        return SOURCES["als"].build(ctx)
    if name == "item_based":
        options = spec.recall.item_based
        if options.similarity == "als":
            return cosine_neighbours(item_factors, allowed, options.neighbours, threads), {}
        return cooccurrence(data, options.similarity, options.neighbours, allowed, options.max_user_items), {}
    if name == "recent_popular":
        options = spec.recall.recent_popular
        return popularity(data, allowed, end_us, options.days, options.half_life_days), {}
    if name == "ease":
        return ease_part(spark, data, allowed, spec, threads)
    raise ValueError(f"the Spark engine has no builder for source {name!r}")


def ease_part(spark: SparkSession, data: Interactions, allowed: np.ndarray, spec: JobSpec,
              threads: int) -> tuple[object, dict]:
    """recall.sources.ease on Spark: the modelled (most popular) items and their Gram matrix X'X
    (co-occurring users per pair) aggregated by Spark, then solved on the driver."""
    options = spec.recall.ease
    pairs = data.frame.select("u", "i").distinct()
    counts = pairs.groupBy("i").agg(F.count(F.lit(1)).alias("n")).toArrow()
    per_item = np.zeros(data.n_items)
    per_item[counts.column("i").to_numpy()] = counts.column("n").to_numpy()
    items = ease.head(per_item, allowed, options.max_items)
    position = spark.createDataFrame([(int(i), p) for p, i in enumerate(items)], "i int, p int")
    modelled = pairs.join(F.broadcast(position), "i").select("u", "p")
    a, b = modelled.alias("a"), modelled.alias("b")
    gram_rows = (a.join(b, "u").groupBy(F.col("a.p").alias("p"), F.col("b.p").alias("q"))
                 .agg(F.count(F.lit(1)).alias("n")).toArrow())
    gram = np.zeros((items.size, items.size), np.float32)
    gram[gram_rows.column("p").to_numpy(), gram_rows.column("q").to_numpy()] = gram_rows.column("n").to_numpy()
    return ease.solve(items, gram, options.l2, threads), {"ease_items": int(items.size)}
