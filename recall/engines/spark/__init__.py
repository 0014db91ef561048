"""The Spark engine (`[job] engine = "spark"`): the same job and the same tables, on a cluster.

Spark reads and checks the window (`read`), MLlib trains ALS and Spark aggregates build the
sources' item-side parts (`train`), tasks answer user partitions with the local engine's
candidate kernel and write the tables into the run's staging folder (`tables`); the driver seals
and publishes them through the commit protocol, as for every engine (recall.run.nightly).
"""
from __future__ import annotations

import dataclasses
import shutil
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recall.engines.base import Engine
from recall.engines.local import side_to_publish
from recall.engines.spark.read import SparkWindow, dense_index, read_window
from recall.engines.spark.rows import user_batch
from recall.engines.spark.session import spark_session
from recall.engines.spark.tables import I2IShare, U2IShare, write_i2i, write_u2i
from recall.engines.spark.train import Interactions, SparkModel, fit_model
from recall.evaluate.backtest import Returning
from recall.evaluate.holdout import HoldoutSet
from recall.evaluate.metrics import Relevant
from recall.ingest.prepare import InputStats
from recall.ingest.window import Window
from recall.kernel.blend import Blend
from recall.kernel.state import UserSide
from recall.model.itemknn import cosine_index
from recall.model.matrix import US_PER_DAY
from recall.spec.sections import JobSpec
from recall.store import item_side
from recall.store.commit import Publication
from recall.store.layout import ITEM_SIDE, STAGING, job_dir
from recall.store.tables import TableWriter, popular_rows, popular_schema
from recall.timer import Timer


@dataclass(frozen=True)
class Fitted:
    model: SparkModel
    item_ids: pa.Array


class SparkEngine(Engine):
    name = "spark"

    def __init__(self, spec: JobSpec, root, threads: int, progress: bool = False) -> None:
        super().__init__(spec, root, threads, progress)
        log = root / spec.log.dir / f"{spec.name}.spark.log"
        self.spark, self.owned = spark_session(spec.spark, f"recall {spec.name}", log)
        # ALS and the id numbering checkpoint here; by default a folder of the job's staging area,
        # which the run clears at its end (and the next run, after a crash)
        name = f"spark-{uuid.uuid4().hex[:12]}"
        base = spec.spark.checkpoint_dir.rstrip("/") if spec.spark.checkpoint_dir else None
        self.checkpoints = f"{base}/{name}" if base else "file:" + str(job_dir(spec, root).root / STAGING / name)
        self.spark.sparkContext.setCheckpointDir(self.checkpoints)
        self.cached: list[DataFrame] = []

    # --- the seam -------------------------------------------------------------------------

    def prepare(self, window: Window, timer: Timer) -> SparkWindow:
        data = read_window(self.spark, self.spec, window, self.root, timer)
        self.cached.append(data.frame)
        return data

    def input_stats(self, data: SparkWindow) -> InputStats:
        return data.stats

    def fit(self, data: SparkWindow, how: Blend, timer: Timer) -> Fitted:
        model = fit_model(self.spark, interactions(data), self.spec, data.window.bounds_us()[1], ~data.blocked,
                          how.sources, self.threads, timer, user_ids=data.users)
        self.cached.append(model.users)
        return Fitted(model, data.items.values)

    def write_tables(self, fitted: Fitted, how: Blend, publication: Publication, timer: Timer) -> dict:
        spec, model = self.spec, fitted.model
        with timer.step("u2i"):
            share = U2IShare(model.side, fitted.item_ids, how, spec.recall.u2i.k, spec.model.factors)
            write_u2i(self.spark, model.users, share, publication.folder("u2i"), spec.output,
                      spec.recall.u2i.batch_size)
        if spec.recall.i2i.k:
            with timer.step("i2i"):
                unit, index = cosine_index(model.item_factors, model.side.allowed)
                write_i2i(self.spark, I2IShare(unit, index, fitted.item_ids, spec.recall.i2i.k),
                          publication.folder("i2i"), spec.output, spec.recall.i2i.batch_size)
        with timer.step("popular"):  # k rows: the driver writes them
            o = spec.output
            writer = TableWriter(publication.folder("popular"), popular_schema(fitted.item_ids.type),
                                 o.max_rows_per_file, o.row_group_rows, o.compression)
            writer.write(popular_rows(model.side.popular, spec.recall.popular.k, fitted.item_ids))
            writer.close()
        with timer.step("item_side"):  # what serving and fold-in read, as the local engine publishes it
            weight_sum = model.weight_sum if model.weight_sum is not None else np.zeros(model.side.n_items, np.float32)
            item_side.write(publication.folder(ITEM_SIDE),
                            side_to_publish(fitted.item_ids, dataclasses.replace(model.side, factors=model.item_factors),
                                            how, spec, weight_sum, publication),
                            spec.name, spec.output.compression)
        return model.search

    def holdout(self, data: SparkWindow, timer: Timer, sources: tuple[str, ...] | None = None,
                spec: JobSpec | None = None) -> HoldoutSet | None:
        """The local engine's split on Spark, `sources` (default the spec's) fitted on its training
        part with `spec`'s settings (default the engine's); the sampled evaluated users (their
        factors, seen and recent items) and their held-out pairs are collected to the driver, where
        the shared scoring takes over."""
        spec = spec or self.spec
        e = spec.evaluate
        sources = tuple(sources or spec.recall.u2i.sources)
        frame, description, cutoff_us = held_out(data, spec)
        if frame is None:
            return None
        counts = frame.groupBy("test").count().collect()
        if len(counts) < 2:
            return None
        train = frame.where(~F.col("test"))
        train_users, n_users = dense_index(train, "u", "tu")
        train_items, n_items = dense_index(train, "i", "ti")
        if n_items < 2:
            return None
        encoded = (train.join(train_users, "u").join(train_items, "i")
                   .select(F.col("tu").alias("u"), F.col("ti").alias("i"), "ts", "w", "row").persist())
        self.cached.append(encoded)
        originals = train_items.orderBy("ti").select("i").toArrow().column(0).to_numpy()
        allowed = ~data.blocked[originals]
        # held-out pairs of users known in training, items they had not touched in training
        test = (frame.where(F.col("test")).join(train_users, "u")
                .join(train_items, "i", "left").select("tu", "i", F.coalesce("ti", F.lit(-1)).alias("ti"))
                .dropDuplicates(["tu", "i"]))
        fresh = test.join(encoded.select(F.col("u").alias("tu"), F.col("i").alias("ti")).distinct(),
                          ["tu", "ti"], "left_anti").persist()
        self.cached.append(fresh)
        users = np.sort(fresh.select("tu").distinct().toArrow().column(0).to_numpy().astype(np.int64))
        if users.size == 0:
            return None
        evaluated = sample(users, e.max_users, spec.model.random_state)
        model = fit_model(self.spark, Interactions(encoded, n_users, n_items, data.timed), spec, cutoff_us, allowed,
                          sources, self.threads, timer, with_i2i=False)
        self.cached.append(model.users)
        chosen = self.spark.createDataFrame([(int(u),) for u in evaluated], "tu int")
        pairs = fresh.join(F.broadcast(chosen), "tu").toArrow()
        rows = model.users.join(F.broadcast(chosen.withColumnRenamed("tu", "u")), "u").orderBy("u").toArrow()
        batch = user_batch(rows, n_items, spec.model.factors)
        held_users = UserSide(batch.seen, batch.factors, batch.recent)
        pair_users = pairs.column("tu").to_numpy().astype(np.int64)
        relevant = Relevant(np.searchsorted(evaluated, pair_users), pairs.column("ti").to_numpy().astype(np.int64))
        train_rows = sum(r["count"] for r in counts if not r["test"])
        return HoldoutSet(model.side, held_users, np.arange(evaluated.size), relevant, description, train_rows,
                          e.k, self.threads, spec.recall.u2i.batch_size)

    def returning(self, data: SparkWindow, since_us: int) -> Returning | str:
        """The local engine's returning_pairs on Spark: users active since `since_us` with items
        they had not touched before, a seeded sample of them collected as ids."""
        if not data.timed:
            return "the log has no time column"
        after = F.col("ts") >= since_us
        later = data.frame.where(after).select("u", "i").distinct()
        if later.isEmpty():
            return "no interactions after that date in this window"
        fresh = later.join(data.frame.where(~after).select("u", "i").distinct(), ["u", "i"], "left_anti").persist()
        self.cached.append(fresh)
        users = np.sort(fresh.select("u").distinct().toArrow().column(0).to_numpy().astype(np.int64))
        if users.size == 0:
            return "returning users touched no new item"
        sampled = sample(users, self.spec.evaluate.max_users, self.spec.model.random_state)
        chosen = self.spark.createDataFrame([(int(u),) for u in sampled], "u int")
        pairs = fresh.join(F.broadcast(chosen), "u").join(data.users, "u").orderBy("u", "i").toArrow()
        items = pa.array(pairs.column("i").to_numpy().astype(np.int64))
        return Returning(pairs.column("user_id").combine_chunks(), data.items.values.take(items),
                         int(users.size), int(sampled.size))

    def close(self) -> None:
        for frame in self.cached:
            frame.unpersist()
        self.cached.clear()
        if self.spec.spark.checkpoint_dir:  # the default folder goes with the run's staging
            path = self.spark.sparkContext._jvm.org.apache.hadoop.fs.Path(self.checkpoints)
            path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()).delete(path, True)
        if self.owned:
            self.spark.stop()
        elif self.checkpoints.startswith("file:"):
            shutil.rmtree(self.checkpoints[len("file:"):], ignore_errors=True)


def interactions(data: SparkWindow) -> Interactions:
    return Interactions(data.frame, data.n_users, data.n_items, data.timed)


def sample(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """recall.evaluate.metrics.sample_users on the distinct users: all, or a seeded sample."""
    if users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def held_out(data: SparkWindow, spec: JobSpec) -> tuple[DataFrame | None, str, int]:
    """The window with a `test` column: recall.evaluate.split.holdout_split's rules."""
    e = spec.evaluate
    end_us = data.window.bounds_us()[1]
    temporal = e.split == "temporal" or (e.split == "auto" and data.timed)
    if temporal and not data.timed:
        return None, "", end_us
    frame = data.frame
    if temporal:
        cutoff = end_us - e.holdout_days * US_PER_DAY
        return (frame.withColumn("test", F.col("ts") >= cutoff),
                f"temporal: last {e.holdout_days} day(s) held out", cutoff)
    from pyspark.sql.window import Window as W

    if e.split == "user_random":
        when = F.rand(spec.model.random_state)
        description = (f"per user: a random {e.holdout_fraction:.0%} of each user's interactions held out "
                       f"(seed {spec.model.random_state})")
    else:
        when = F.col("ts") if data.timed else F.col("row")
        order = "time" if data.timed else "log order"
        description = f"per user: last {e.holdout_fraction:.0%} of each user's interactions (by {order}) held out"
    per_user = W.partitionBy("u")
    ranked = (frame.withColumn("_when", when)
              .withColumn("_pos", F.row_number().over(per_user.orderBy("_when", "row")) - 1)
              .withColumn("_size", F.count(F.lit(1)).over(per_user)))
    held = F.floor(F.col("_size") * e.holdout_fraction)
    test = (F.col("_size") >= 2) & (F.col("_pos") >= F.col("_size") - held)
    return ranked.withColumn("test", test).drop("_when", "_pos", "_size"), description, end_us
