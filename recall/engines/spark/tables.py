"""The tables written by Spark tasks into the run's staging folder, with the local engine's kernel.

u2i: users range-partitioned by index (= id order) and sorted; each task turns its Arrow batches
into UserBatches, answers them with `recommend` against the item side (broadcast: shipped once
to each executor and kept by its reused Python workers), checks the u2i contract, and writes its
rows with the local engine's Parquet writer. i2i: items the same way. A task writes under a
hidden folder of its attempt and renames its files into the partition as
part-<task>-<file>.parquet, so files sort in key order, a retried or speculative attempt replaces
the same names with the same rows, and a killed one leaves only hidden files (the seal drops
them). The driver then seals (numbers the files, writes _SUCCESS) and publishes.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from threadpoolctl import threadpool_limits

from recall.engines.spark.rows import user_batch
from recall.kernel.blend import Blend
from recall.kernel.state import ItemIndex, ItemSide
from recall.model.itemknn import cosine_rows
from recall.sources import NAMES
from recall.sources.recommend import contract_violation, recommend
from recall.spec.sections import OutputSection
from recall.store.atomic import fsync_dir
from recall.store.tables import TableWriter, i2i_rows, i2i_schema, u2i_rows, u2i_schema

WRITTEN = "file string, rows long"  # what each task reports back


@dataclass(frozen=True)
class Target:
    """Where a table's tasks write: the staged partition, a hidden scratch folder beside it, and
    the Parquet settings of [output]."""

    folder: str  # the staged partition: <staging>/<run>/<table>/dt=D
    scratch: str  # <staging>/<run>/<table>/.tasks
    schema: pa.Schema
    output: OutputSection

    @classmethod
    def of(cls, folder: Path, schema: pa.Schema, output: OutputSection) -> Target:
        return cls(str(folder), str(folder.parent / ".tasks"), schema, output)

    def writer(self) -> tuple[TableWriter, Path]:
        ctx = TaskContext.get()
        tmp = Path(self.scratch) / f"{ctx.partitionId()}-{ctx.attemptNumber()}-{ctx.taskAttemptId()}"
        shutil.rmtree(tmp, ignore_errors=True)
        o = self.output
        return TableWriter(tmp, self.schema, o.max_rows_per_file, o.row_group_rows, o.compression), tmp

    def commit(self, writer: TableWriter, tmp: Path, wrote: bool) -> Iterator[pa.RecordBatch]:
        """Close the task's files and move them into the partition under their final names."""
        if wrote:  # a task with no rows writes no file
            writer.close()
        task = TaskContext.get().partitionId()
        names, rows = [], []
        for j, name in enumerate(sorted(writer.files)):
            final = f"part-{task:05d}-{j:03d}.parquet"
            os.replace(tmp / name, Path(self.folder) / final)
            names.append(final)
            rows.append(writer.files[name])
        if names:
            fsync_dir(Path(self.folder))
        shutil.rmtree(tmp, ignore_errors=True)
        yield pa.RecordBatch.from_pydict({"file": pa.array(names, pa.string()), "rows": pa.array(rows, pa.int64())})


@dataclass(frozen=True)
class U2IShare:
    """What every u2i task needs, broadcast once."""

    side: ItemSide
    item_ids: pa.Array
    how: Blend
    k: int
    width: int  # ALS factors per user


def u2i_task(share, target: Target, threads: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One partition of users, in index order, batch by batch: the local engine's write_u2i."""
    s: U2IShare = share.value
    names = pa.array(NAMES, pa.string())
    writer, tmp = target.writer()
    wrote = False
    with threadpool_limits(limits=threads):  # Spark sets OMP_NUM_THREADS only when unset
        for rows in batches:
            wrote = True
            batch = user_batch(rows, s.side.n_items, s.width)
            merged = recommend(s.side, batch, s.how, s.k, threads)
            broken = contract_violation(s.side, batch, merged, s.k)
            if broken:
                raise RuntimeError(f"u2i contract broken: {broken}")
            writer.write(u2i_rows(np.arange(batch.size), merged, rows.column("user_id"), s.item_ids, names))
    yield from target.commit(writer, tmp, wrote)


@dataclass(frozen=True)
class I2IShare:
    unit: np.ndarray  # unit item vectors
    index: ItemIndex  # exact index of the allowed unit vectors
    item_ids: pa.Array
    k: int


def i2i_task(share, target: Target, threads: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One range of items: their top-k cosine neighbours, as the local i2i table."""
    s: I2IShare = share.value
    writer, tmp = target.writer()
    wrote = False
    with threadpool_limits(limits=threads):
        for rows in batches:
            wrote = True
            items = rows.column("id").to_numpy().astype(np.int64)
            similar, scores = cosine_rows(s.unit, s.index, items, s.k, threads)
            writer.write(i2i_rows(items, similar, scores, s.item_ids))
    yield from target.commit(writer, tmp, wrote)


def task_threads(spark: SparkSession) -> int:
    """Cores a task may use (spark.task.cpus): each task's BLAS is pinned to them."""
    return int(spark.conf.get("spark.task.cpus", "1") or 1)


def partitions(n: int, per_task: int, spark: SparkSession) -> int:
    """Tasks for n rows: `per_task` each, or about four waves over the cluster's cores, with at
    least 20k rows a task (a task's fixed cost stays small next to its kernel time)."""
    cores = spark.sparkContext.defaultParallelism
    per_task = per_task or max(20_000, math.ceil(n / (4 * cores)))
    return max(1, math.ceil(n / per_task))


def run_tasks(frame: DataFrame, task, share, target: Target, spark: SparkSession, batch_size: int) -> int:
    """Run `task` over the partitions of `frame`; returns the rows written. A table no task wrote
    a row of still gets one (empty) part file, so readers see its schema."""
    Path(target.folder).mkdir(parents=True, exist_ok=True)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
    done = frame.mapInArrow(functools.partial(task, share, target, task_threads(spark)), WRITTEN).collect()
    rows = sum(r["rows"] for r in done)
    if not done or not any(r["file"] for r in done):
        TableWriter(Path(target.folder), target.schema, 1, 1, target.output.compression).close()
    return rows


def write_u2i(spark: SparkSession, users: DataFrame, share: U2IShare, folder: Path, output: OutputSection,
              batch_size: int) -> int:
    """`users` range-partitioned by index and sorted within (the Spark engine's fit does it)."""
    user_type = pa.string() if dict(users.dtypes)["user_id"] == "string" else pa.int64()
    target = Target.of(folder, u2i_schema(user_type, share.item_ids.type), output)
    bc = spark.sparkContext.broadcast(share)
    try:
        return run_tasks(users, u2i_task, bc, target, spark, batch_size)
    finally:
        bc.destroy()


def write_i2i(spark: SparkSession, share: I2IShare, folder: Path, output: OutputSection, batch_size: int) -> int:
    n = len(share.item_ids)
    target = Target.of(folder, i2i_schema(share.item_ids.type), output)
    items = spark.range(0, n, 1, numPartitions=partitions(n, 0, spark))  # contiguous ranges, in order
    bc = spark.sparkContext.broadcast(share)
    try:
        return run_tasks(items, i2i_task, bc, target, spark, batch_size)
    finally:
        bc.destroy()
