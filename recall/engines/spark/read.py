"""The window read by Spark: files chosen by `dt` partition (only those are read), the local
reader's column rules and row checks as Spark SQL, ids encoded to dense indices in id order.

Every refusal is the local engine's: the same InputError (exit 3) and the same one line
(recall.ingest.read, recall.ingest.validate), so a job fails alike on either engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
from loguru import logger
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window as W

from recall.errors import InputError
from recall.ingest.prepare import InputStats, blocked_items, check_catalogue, load_blocklist
from recall.ingest.read import (FLOAT_MARK_RE, INT_TEXT_RE, NUMBER_TEXT_RE, FileRead,
                                choose_files, is_text, missing_column, missing_input,
                                resolve_columns)
from recall.ingest.validate import BadRows, refuse_if_too_bad
from recall.ingest.window import Window
from recall.model.matrix import IdMap
from recall.spec.sections import InputSection, JobSpec
from recall.timer import Timer

SPARK_ERRORS = (PySparkException, Py4JJavaError)  # what Spark raises for a file it cannot read
SCALE = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
INTEGRAL = (T.LongType, T.IntegerType, T.ShortType, T.ByteType)


@dataclass
class SparkWindow:
    """The window's valid interactions, encoded: `frame` holds u, i (int32 indices), ts (UTC
    microseconds or null), w (the row's weight times its event's) and row (the log order)."""

    window: Window
    frame: DataFrame
    users: DataFrame  # u, user_id
    items: IdMap  # on the driver: the item map, index order
    blocked: np.ndarray  # bool per item
    n_users: int
    timed: bool
    stats: InputStats

    @property
    def n_items(self) -> int:
        return len(self.items)


# --- files ------------------------------------------------------------------------------


def location(spec: InputSection, root: Path) -> tuple[str, str]:
    """(what Spark reads, what messages name): a URI as given, or a local path under the project."""
    if "://" in spec.path:
        return spec.path, spec.path
    path = root / spec.path  # an absolute spec.path replaces root
    return "file:" + str(path), str(path)


def shown(uri: str) -> str:
    """A file as messages name it: local files by their path, as the local engine does."""
    return uri[len("file:"):] if uri.startswith("file:") else uri


def list_window(spark: SparkSession, spec: InputSection, window: Window, root: Path) -> tuple[list[str], bool, list[str], str]:
    """The window's files (Hadoop URIs, in path order) through Hadoop's FileSystem, so any path
    Spark reads works (hdfs://, s3a://, file:); the local reader's rules and messages."""
    uri, name = location(spec, root)
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        raise missing_input(name, spec, root)
    status = fs.getFileStatus(path)
    if status.isFile():
        files, sizes = [status.getPath().toString()], {status.getPath().toString(): status.getLen()}
        chosen, partitioned, missing = files, False, []
    else:
        base = status.getPath().toString().rstrip("/")
        found, sizes = [], {}
        listing = fs.listFiles(path, True)
        while listing.hasNext():
            entry = listing.next()
            full = entry.getPath().toString()
            parts = tuple(full[len(base) + 1:].split("/"))
            if not any(p.startswith(("_", ".")) for p in parts):
                found.append((shown(full), parts))  # messages name files as the local reader does
                sizes[full] = entry.getLen()
        found.sort(key=lambda f: f[1])
        uris = {shown(uri): uri for uri in sizes}
        chosen, partitioned, missing = choose_files(found, window)
        chosen = [uris[f] for f in chosen]
    if not chosen:
        raise InputError(f"no input files for window {window.start}..{window.run_date} under {name}")
    if partitioned and spec.require_run_date and window.run_date.isoformat() in missing:
        raise InputError(
            f"no partition dt={window.run_date} under {name}: the run date's data has not landed",
            hint="wait for upstream, or set input.require_run_date=false to run without it",
        )
    for f in chosen:
        if sizes[f] == 0:
            raise InputError(f"empty file (0 bytes): {shown(f)}")
    return chosen, partitioned, missing, name


# --- columns ----------------------------------------------------------------------------


def arrow_name(kind: T.DataType) -> str:
    """A Spark type as the local reader's messages name it (Arrow's names)."""
    if isinstance(kind, T.DecimalType):
        return f"decimal128({kind.precision}, {kind.scale})"
    names = {T.DoubleType: "double", T.FloatType: "float", T.StringType: "string", T.LongType: "int64",
             T.IntegerType: "int32", T.ShortType: "int16", T.ByteType: "int8", T.BooleanType: "bool",
             T.BinaryType: "binary", T.DateType: "date32[day]", T.TimestampType: "timestamp[us, tz=UTC]",
             T.TimestampNTZType: "timestamp[us]"}
    return names.get(type(kind), kind.simpleString())


def read_files(spark: SparkSession, files: list[str], spec: InputSection) -> DataFrame:
    """The files as one DataFrame with a `_file` column (its index in `files`). CSV columns are
    read as text and typed below, as the local reader types them."""
    csv = [f for f in files if is_text(PurePosixPath(f), spec)]
    parquet = [f for f in files if f not in set(csv)]
    frames = []
    try:
        if parquet:
            frames.append(spark.read.option("mergeSchema", "true").parquet(*parquet))
        if csv:
            frames.append(spark.read.options(header=True, sep=spec.csv_delimiter, inferSchema=False,
                                             enforceSchema=False, mode="PERMISSIVE").csv(csv))
    except SPARK_ERRORS as exc:
        raise unreadable(spark, exc, parquet, csv, spec) from None
    if len(frames) == 2 and set(frames[0].columns) != set(frames[1].columns):
        raise InputError(f"CSV and Parquet files of one input have different columns: {shown(csv[0])}, "
                         f"{shown(parquet[0])}")
    index = spark.createDataFrame([(f, i) for i, f in enumerate(files)], "_path string, _file int")
    out = [frame.withColumn("_path", F.expr("try_url_decode(_metadata.file_path)")) for frame in frames]
    data = out[0] if len(out) == 1 else out[0].unionByName(out[1], allowMissingColumns=True)
    return data.join(F.broadcast(index), "_path").drop("_path")


def unreadable(spark: SparkSession, exc: Exception, parquet: list[str], csv: list[str], spec: InputSection) -> InputError:
    """Why the files could not be read together, naming a file as the local reader does."""
    types: dict[str, tuple[str, str]] = {}
    for f in parquet:
        try:
            schema = spark.read.parquet(f).schema
        except SPARK_ERRORS as one:
            return InputError(f"cannot read parquet file {shown(f)}: {first_line(one)}")
        for col in (spec.user_col, spec.item_col):
            if col in schema.names:
                kind = schema[col].dataType
                name = "int64" if isinstance(kind, INTEGRAL) else arrow_name(kind)
                seen = types.setdefault(col, (name, f))
                if seen[0] != name:
                    return InputError(f"id type changes between files: column {col!r} is {seen[0]} in "
                                      f"{shown(seen[1])} but {name} in {shown(f)}")
    where = parquet[0] if parquet else csv[0]
    return InputError(f"cannot read {'parquet' if parquet else 'csv'} input {shown(where)}...: {first_line(exc)}")


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_columns(spark: SparkSession, raw: DataFrame, cols, files: list[str], src: InputSection) -> None:
    """Each file holds every column used: a Parquet file without one reads as nulls once the
    schemas are merged, so files whose column is all null have their footer looked at."""
    present = cols.present().values()
    counts = per_file(raw, {"rows": F.count(F.lit(1)), **{f"n{j}": F.count(F.col(f"`{c}`"))
                                                          for j, c in enumerate(present)}})
    suspects = sorted(i for i, s in counts.items()
                      if s["rows"] and any(s[f"n{j}"] == 0 for j in range(len(present))))
    for i in suspects:
        if is_text(PurePosixPath(files[i]), src):
            continue
        names = footer_columns(spark, files[i])
        for key, name in cols.present().items():
            if name not in names:
                raise missing_column(name, key, shown(files[i]), names, None if i == 0 else shown(files[0]))


def footer_columns(spark: SparkSession, uri: str) -> list[str]:
    """The top-level columns of a Parquet file, from its footer (read on the driver)."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(
        jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(jvm.org.apache.hadoop.fs.Path(uri), conf))
    try:
        fields = reader.getFooter().getFileMetaData().getSchema().getFields()
        return [fields.get(j).getName() for j in range(fields.size())]
    finally:
        reader.close()


def per_file(data: DataFrame, exprs: dict[str, Column]) -> dict[int, dict]:
    """Aggregates per file, on the driver: {file index: {name: value}}."""
    rows = data.groupBy("_file").agg(*[e.alias(k) for k, e in exprs.items()]).collect()
    return {r["_file"]: r.asDict() for r in rows}


def id_column(data: DataFrame, name: str, files: list[str], spec: InputSection) -> Column:
    """An id column as bigint or string; float ids refused; CSV text ids typed per file as the
    local reader does (canonical integers become int64, leading zeros or letters stay text)."""
    kind = data.schema[name].dataType
    first = shown(files[0])
    col = F.col(f"`{name}`")
    if isinstance(kind, T.DecimalType) and (kind.precision, kind.scale) == (20, 0):
        # Parquet's unsigned 64-bit integers, as Spark reads them
        over = per_file(data, {"over": F.count_if(col > F.lit(2**63 - 1))})
        for i in sorted(over):
            if over[i]["over"]:
                raise InputError(f"id column {name!r} in {shown(files[i])} has values beyond int64")
        return col.cast("bigint")
    if isinstance(kind, (T.FloatType, T.DoubleType, T.DecimalType)):
        raise InputError(f"floating-point ids refused: column {name!r} in {first} is {arrow_name(kind)} "
                         "(ids above 2^53 lose precision); write ids as integers or strings")
    if isinstance(kind, INTEGRAL):
        return col.cast("bigint")
    if not isinstance(kind, T.StringType):
        raise InputError(f"id column {name!r} in {first} is {arrow_name(kind)}; ids must be integers or strings")
    csv_files = [i for i, f in enumerate(files) if is_text(PurePosixPath(f), spec)]
    if not csv_files:
        return col
    valid = col.isNotNull()
    whole = col.rlike(INT_TEXT_RE)
    stats = per_file(data.where(F.col("_file").isin(csv_files)), {
        "values": F.count(col),
        "ints": F.count_if(valid & whole),
        "fits": F.count_if(valid & whole & F.expr(f"try_cast(`{name}` as bigint)").isNotNull()),
        "numbers": F.count_if(valid & col.rlike(NUMBER_TEXT_RE)),
        "example": F.min_by(col, F.when(valid & col.rlike(FLOAT_MARK_RE), F.col("_row"))),
    })
    kinds = {}
    for i in csv_files:
        s = stats.get(i)
        if s is None or s["values"] == 0:
            continue  # no value at all: whatever type the others say
        if s["ints"] == s["values"]:
            kinds[i] = "int64" if s["fits"] == s["values"] else "string"
        elif s["numbers"] == s["values"] and s["example"] is not None:
            raise InputError(
                f"floating-point ids refused: column {name!r} in {shown(files[i])} holds numbers with a decimal "
                f"point or exponent (e.g. {s['example']!r}); write ids as integers or strings")
        else:
            kinds[i] = "string"
    ordered = sorted(kinds)
    for i in ordered[1:]:
        if kinds[i] != kinds[ordered[0]]:
            raise InputError(f"id type changes between files: column {name!r} is {kinds[ordered[0]]} in "
                             f"{shown(files[ordered[0]])} but {kinds[i]} in {shown(files[i])}")
    return col.cast("bigint") if kinds and kinds[ordered[0]] == "int64" else col


def time_columns(data: DataFrame, name: str, unit: str, files: list[str], spec: InputSection) -> tuple[Column, Column]:
    """(UTC microseconds, unparseable-or-null) of a time column; naive times are UTC."""
    kind = data.schema[name].dataType
    col = F.col(f"`{name}`")
    if isinstance(kind, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        ts = F.unix_micros(col.cast("timestamp"))
        return F.coalesce(ts, F.lit(0)), ts.isNull()
    numeric = isinstance(kind, (*INTEGRAL, T.FloatType, T.DoubleType, T.DecimalType))
    if isinstance(kind, T.StringType) and any(is_text(PurePosixPath(f), spec) for f in files):
        # a CSV column of numbers is numbers to the local reader (Arrow infers them)
        as_number = F.expr(f"try_cast(`{name}` as double)")
        counts = data.agg(F.count(col).alias("values"), F.count(as_number).alias("numbers")).first()
        numeric = counts["values"] > 0 and counts["values"] == counts["numbers"]
    if numeric:
        scaled = col.cast("double") * F.lit(SCALE[unit])
        bad = col.isNull() | F.isnan(scaled) | (F.abs(scaled) > 9.2e18)
        return F.when(bad, F.lit(0)).otherwise(scaled.cast("bigint")), bad
    if isinstance(kind, T.StringType):
        ts = F.unix_micros(F.expr(f"try_cast(`{name}` as timestamp)"))
        return F.coalesce(ts, F.lit(0)), ts.isNull()
    raise InputError(f"time column {name!r} in {shown(files[0])} is {arrow_name(kind)}; expected a timestamp, "
                     "a number or text")


def weight_column(data: DataFrame, name: str, files: list[str], spec: InputSection) -> Column:
    kind = data.schema[name].dataType
    col = F.col(f"`{name}`")
    if isinstance(kind, (*INTEGRAL, T.FloatType, T.DoubleType, T.DecimalType, T.NullType)):
        return col.cast("double")
    if isinstance(kind, T.StringType):
        text = [i for i, f in enumerate(files) if is_text(PurePosixPath(f), spec)]
        stats = per_file(data, {"values": F.count(col), "numbers": F.count(F.expr(f"try_cast(`{name}` as double)"))})
        for i in sorted(stats):
            if i in text and stats[i]["values"] == stats[i]["numbers"]:
                continue
            raise InputError(f"weight column {name!r} in {shown(files[i])} is string, not a number")
        return F.expr(f"try_cast(`{name}` as double)")
    raise InputError(f"weight column {name!r} in {shown(files[0])} is {arrow_name(kind)}, not a number")


# --- the window -------------------------------------------------------------------------


def read_window(spark: SparkSession, spec: JobSpec, window: Window, root: Path, timer: Timer) -> SparkWindow:
    """Read, check and encode the window: the local engine's `prepare`, on Spark."""
    src = spec.input
    with timer.step("read"):
        files, partitioned, missing, where = list_window(spark, src, window, root)
        raw = read_files(spark, files, src).withColumn("_row", F.monotonically_increasing_id())
        cols = resolve_columns(src, [c for c in raw.columns if not c.startswith("_")], shown(files[0]))
        check_columns(spark, raw, cols, files, src)
        user = id_column(raw, cols.user, files, src)
        item = id_column(raw, cols.item, files, src)
        frame = raw.select(F.col("_file"), F.col("_row"), user.alias("user_id"), item.alias("item_id"),
                           *time_select(raw, cols.time, files, src), *weight_select(raw, cols.weight, files, src),
                           (F.col(f"`{cols.event}`").cast("string") if cols.event else F.lit(None)).alias("event"))
        if not partitioned and cols.time:
            lo, hi = window.bounds_us()
            frame = frame.where(F.col("ts_bad") | ((F.col("ts") >= lo) & (F.col("ts") < hi)))
    logger.info(f"reading {len(files)} file(s) of {where} with Spark")
    with timer.step("validate"):
        checked, labels = checks(frame, cols, src)
        checked = checked.localCheckpoint(eager=True)
        report, rows_per_file = bad_rows(checked, labels, files)
    logger.info(f"read {report.total_rows} rows from {len(files)} file(s)"
                + (f"; no data for {', '.join(missing)}" if missing else ""))
    if report.total_rows == 0:
        raise InputError(f"no interactions in window {window.start}..{window.run_date} ({window.timezone}) "
                         f"in {where} ({len(files)} file(s) read)")
    refuse_if_too_bad(report, src)
    if report.bad_rows:
        logger.info(f"dropped {report.bad_rows} bad rows ({report.fraction:.3%}): "
                    + "; ".join(f"{c['check']} in {c['column']}: {c['rows']}" for c in report.by_check[:5]))
    with timer.step("matrix"):
        good = checked.where(~F.col("_bad"))
        users, n_users = dense_index(good, "user_id", "u")
        items_frame, n_items = dense_index(good, "item_id", "i")
        items = IdMap(pa.array(items_frame.orderBy("i").select("item_id").toArrow().column(0).combine_chunks()))
        encoded = (good.join(users, "user_id").join(items_frame, "item_id")
                   .select("u", "i", "ts", "w", "_row").withColumnRenamed("_row", "row")
                   .localCheckpoint(eager=True))
        blocked = blocked_items(items, load_blocklist(spec, root), spec.source)
    reads = [FileRead(shown(f), rows_per_file.get(i, 0)) for i, f in enumerate(files)]
    check_catalogue(n_items, blocked, report.total_rows, reads[0].path)
    interactions = report.total_rows - report.bad_rows
    logger.info(f"{n_users} users x {n_items} items, {interactions} interactions, {int(blocked.sum())} blocklisted")
    missing_days = [d for d in missing if d != window.run_date.isoformat() or not src.require_run_date]
    stats = InputStats(src.path, reads, report.total_rows, missing_days, report, n_users, n_items, interactions,
                       int(blocked.sum()))
    return SparkWindow(window, encoded, users, items, blocked, n_users, cols.time is not None, stats)


def time_select(raw: DataFrame, name: str | None, files: list[str], src: InputSection) -> list[Column]:
    if not name:
        return [F.lit(None).cast("bigint").alias("ts"), F.lit(False).alias("ts_bad")]
    ts, bad = time_columns(raw, name, src.time_unit, files, src)
    return [ts.alias("ts"), bad.alias("ts_bad")]


def weight_select(raw: DataFrame, name: str | None, files: list[str], src: InputSection) -> list[Column]:
    if not name:
        return [F.lit(None).cast("double").alias("weight")]
    return [weight_column(raw, name, files, src).alias("weight")]


def checks(frame: DataFrame, cols, src: InputSection) -> tuple[DataFrame, list[tuple[str, str]]]:
    """The local validator's row checks as columns `_c<n>` (their labels in CHECKS order), `_bad`
    (any of them, or an exact duplicate of an earlier row) and `w`, the row's weight."""
    conds: list[tuple[str, str, Column]] = []
    for name, key in ((src.user_col, "user_id"), (src.item_col, "item_id")):
        conds.append((name, "null id", F.col(key).isNull()))
        if isinstance(frame.schema[key].dataType, T.StringType):
            conds.append((name, "empty id", F.coalesce(F.trim(F.col(key)) == "", F.lit(False))))
    if cols.time:
        conds.append((src.time_col or "ts", "unparseable or null time", F.col("ts_bad")))
    weight = F.lit(1.0)
    if cols.weight:
        w, label = F.col("weight"), src.weight_col or "weight"
        finite = w.isNotNull() & ~F.isnan(w) & (F.abs(w) != float("inf"))
        conds.append((label, "null or non-finite weight", ~finite))
        conds.append((label, "negative weight", finite & (w < 0)))
        conds.append((label, "zero weight", F.coalesce(w == 0, F.lit(False))))
        conds.append((label, f"weight above max_weight {src.max_weight:g}", finite & (w > src.max_weight)))
        weight = F.when(finite, w).otherwise(0.0)
    if cols.event:
        known = sorted(src.event_weights)
        table = F.create_map(*[x for e in known for x in (F.lit(e), F.lit(float(src.event_weights[e])))])
        conds.append((src.event_col or "event", f"unknown event (known: {', '.join(known)})",
                      F.col("event").isNull() | ~F.col("event").isin(known)))
        weight = weight * F.coalesce(table[F.col("event")], F.lit(0.0))
    out = frame.select("*", *[c.alias(f"_c{n}") for n, (_, _, c) in enumerate(conds)])
    bad = F.lit(False)
    for n in range(len(conds)):
        bad = bad | F.col(f"_c{n}")
    out = out.withColumn("_bad", bad).withColumn("w", weight)
    labels = [(column, check) for column, check, _ in conds]
    if src.duplicates == "drop" and cols.time:
        # an exact repeat of an earlier row (file order, then row order) among every row, as
        # pandas' duplicated(keep="first") does in the local validator; only good rows count
        key = ["user_id", "item_id", "ts", "weight", "event"]
        first = F.row_number().over(W.partitionBy(*key).orderBy("_file", "_row"))
        out = out.withColumn(f"_c{len(conds)}", (first > 1) & ~F.col("_bad"))
        out = out.withColumn("_bad", F.col("_bad") | F.col(f"_c{len(conds)}"))
        labels.append((f"{src.user_col},{src.item_col},{src.time_col or 'ts'}",
                       "duplicate row (same user, item, time, event, weight)"))
    return out, labels


def bad_rows(checked: DataFrame, labels: list[tuple[str, str]], files: list[str]) -> tuple[BadRows, dict[int, int]]:
    """Counts per file, column and check, as the local validator reports them; rows per file."""
    sums = {f"c{n}": F.count_if(F.col(f"_c{n}")) for n in range(len(labels))}
    stats = per_file(checked, {"rows": F.count(F.lit(1)), "bad": F.count_if(F.col("_bad")), **sums})
    report = BadRows(total_rows=sum(s["rows"] for s in stats.values()))
    report.bad_rows = sum(s["bad"] for s in stats.values())
    for n, (column, check) in enumerate(labels):
        for i in sorted(stats):
            if stats[i][f"c{n}"]:
                report.by_check.append({"file": shown(files[i]), "column": column, "check": check,
                                        "rows": int(stats[i][f"c{n}"])})
        if check.startswith("duplicate row"):
            report.duplicate_rows = sum(s[f"c{n}"] for s in stats.values())
    report.by_check.sort(key=lambda c: -c["rows"])
    return report, {i: s["rows"] for i, s in stats.items()}


def dense_index(frame: DataFrame, key: str, name: str) -> tuple[DataFrame, int]:
    """Distinct values of `key` numbered 0..n-1 in value order (column `name`, int32), like the
    local IdMap: range-partitioned and sorted, each partition numbered from the rows before it
    (monotonically_increasing_id holds the partition and the position), checkpointed so the
    numbering cannot change on recomputation."""
    ordered = (frame.select(key).distinct().repartitionByRange(key).sortWithinPartitions(key)
               .withColumn("_pid", F.spark_partition_id())
               .withColumn("_pos", F.monotonically_increasing_id() - (F.col("_pid").cast("bigint") * (1 << 33)))
               .localCheckpoint(eager=True))
    sizes = {r["_pid"]: r["n"] for r in ordered.groupBy("_pid").agg(F.count(F.lit(1)).alias("n")).collect()}
    offsets, total = {}, 0
    for pid in sorted(sizes):
        offsets[pid], total = total, total + sizes[pid]
    start = F.create_map(*[x for pid, off in offsets.items() for x in (F.lit(pid), F.lit(off))]) if offsets else None
    index = ordered.select(key, (start[F.col("_pid")] + F.col("_pos")).cast("int").alias(name)) if offsets else \
        ordered.select(key, F.lit(0).alias(name))
    return index, total
