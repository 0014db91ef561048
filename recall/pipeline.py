"""The nightly run: one job, one date, from interaction log to published recall tables."""
from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger

from recall import evaluate, history, publish
from recall.candidates import SOURCES, Merged
from recall.config import JobSpec
from recall.errors import EXIT_BUG, InputError, RecallError
from recall.io import Window, read_window
from recall.lock import job_lock
from recall.logs import add_job_file, remove_sink
from recall.matrix import Interactions, encode
from recall.reader import read_arrow
from recall.recaller import Recaller, blocked_items, fit
from recall.testpoint import pause_point
from recall.train import job_threads
from recall.validate import validate
from recall.versions import code_version, library_versions



@dataclass
class RunOptions:
    date: dt.date
    root: Path
    force: bool = False
    skip_gate: bool = False
    progress: bool = False


@dataclass
class RunResult:
    job: str
    date: str
    status: str  # "published" or "skipped"
    run_id: str
    manifest: dict | None = None
    output: Path | None = None


@dataclass
class Timer:
    """Wall time of each step, logged as it ends."""

    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        logger.info(f"step {name} done in {self.timings[name]:.2f}s")


def job_dir(spec: JobSpec, root: Path) -> publish.JobDir:
    return publish.JobDir(root / spec.output.path / spec.name)  # an absolute path replaces root


def run_job(spec: JobSpec, opts: RunOptions) -> RunResult:
    """Lock the job, log to its file, run the date, record it in the job's history."""
    out = job_dir(spec, opts.root)
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    with job_lock(out.root / "_lock", spec.name):  # a loser stops here: no log, no history
        sink = -1
        started = time.time()
        record = {"date": opts.date.isoformat(), "run_id": run_id, "forced": opts.force}
        try:
            with logger.contextualize(job=spec.name, date=opts.date.isoformat(), run_id=run_id):
                try:
                    sink = add_job_file(spec.log, spec.name, opts.root)
                    result = run_locked(spec, opts, out, run_id)
                    record.update(status=result.status, exit_code=0, rows={
                        name: t["rows"] for name, t in ((result.manifest or {}).get("tables") or {}).items()})
                    return result
                except RecallError as exc:
                    record.update(status="failed", exit_code=exc.exit_code, error=exc.line())
                    logger.bind(console=False).error(f"run failed (exit {exc.exit_code}): {exc.line()}")
                    raise
                except BaseException as exc:
                    record.update(status="failed", exit_code=EXIT_BUG, error=f"{type(exc).__name__}: {exc}")
                    logger.bind(console=False).opt(exception=exc).error("run failed with an internal error")
                    raise
                finally:
                    publish.clear_staging(out)
                    record.update(started=dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(
                        timespec="seconds"), duration_s=round(time.time() - started, 3))
                    history.append(out, record)
        finally:
            remove_sink(sink)


def settle(out: publish.JobDir, console: bool = True) -> None:
    """Undo (or finish) publishes that did not complete, saying so."""
    for what in publish.recover(out):
        logger.bind(console=console).warning(what)


def run_locked(spec: JobSpec, opts: RunOptions, out: publish.JobDir, run_id: str) -> RunResult:
    date = opts.date.isoformat()
    try:
        settle(out)  # a run killed while publishing
    except OSError as exc:
        raise publish.output_error(exc, out.root) from None
    leftovers = publish.clear_staging(out)
    if leftovers:
        logger.info(f"cleared {len(leftovers)} staging folder(s) left by earlier runs")
    if publish.is_published(out, date) and not opts.force:
        logger.info(f"{date} is already published; skipped (use --force to replace it)")
        return RunResult(spec.name, date, "skipped", run_id, publish.read_manifest(out, date), out.root)
    threads = job_threads(spec.model.threads)
    faiss.omp_set_num_threads(threads)
    window = Window(opts.date, spec.job.lookback_days, spec.job.timezone)
    end_us = window.bounds_us()[1]
    logger.info(f"run {run_id}: window {window.start}..{window.run_date} ({window.timezone}), "
                f"spec {spec.source}, {threads} thread(s)" + (", forced" if opts.force else ""))
    timer = Timer()

    with timer.step("read"):
        raw = read_window(spec.input, window, opts.root)
    logger.info(f"read {raw.rows} rows from {len(raw.files)} file(s)"
                + (f"; no data for {', '.join(raw.missing_days)}" if raw.missing_days else ""))
    with timer.step("validate"):
        clean, bad = validate(raw, spec.input)
    if bad.bad_rows:
        logger.info(f"dropped {bad.bad_rows} bad rows ({bad.fraction:.3%}): "
                    + "; ".join(f"{c['check']} in {c['column']}: {c['rows']}" for c in bad.by_check[:5]))
    with timer.step("matrix"):
        inter = encode(clean)
        blocked = blocked_items(inter.items, load_blocklist(spec, opts.root), spec.source)
    check_catalogue(inter, blocked, raw)
    logger.info(f"{len(inter.users)} users x {len(inter.items)} items, {clean.rows} interactions, "
                f"{int(blocked.sum())} blocklisted")
    read = {"rows": raw.rows, "files": raw.files, "missing_days": raw.missing_days, "interactions": clean.rows}
    del raw, clean  # the matrix holds the rows from here on: the log's columns go (bounded memory)

    metrics = None
    if spec.evaluate.holdout_days > 0:
        with timer.step("evaluate"):
            metrics = evaluate.holdout_metrics(inter, spec, end_us, blocked)
    earlier = [d for d in publish.published_dates(out) if d < date]
    prev_date = earlier[-1] if earlier else None  # the backtest's subject and the gate's reference
    with timer.step("backtest"):
        served = backtest(out, inter, prev_date, spec) if prev_date else None
    with timer.step("train"):
        rec = fit(inter, spec, end_us, blocked, show_progress=opts.progress)

    staged = out.staging(run_id)
    markers: dict[str, dict] = {}
    try:
        with timer.step("u2i"):
            markers["u2i"] = write_u2i(rec, spec, staged, date, run_id, opts.progress)
        if spec.recall.i2i.k > 0:
            with timer.step("i2i"):
                markers["i2i"] = write_i2i(rec, spec, staged, date, run_id)
        with timer.step("popular"):
            markers["popular"] = write_popular(rec, spec, staged, date, run_id)
    except OSError as exc:
        raise publish.output_error(exc, out.root) from None
    rows = {name: m["rows"] for name, m in markers.items()}
    logger.info("staged " + ", ".join(f"{name} {n} rows" for name, n in rows.items()))

    previous = (publish.read_manifest(out, prev_date) or {}).get("metrics") if prev_date else None
    checks = evaluate.gate_checks(spec.gate, metrics, previous, rows["u2i"])
    evaluate.enforce_gate(checks, opts.skip_gate)

    manifest = {
        "job": spec.name, "date": date, "run_id": run_id, "spec": spec.source,
        "spec_hash": spec.spec_hash(), "code_version": code_version(), "libraries": library_versions(),
        "seed": spec.model.random_state, "threads": threads, "forced": opts.force,
        "skip_gate": opts.skip_gate,
        "window": {"start": window.start.isoformat(), "end": date, "days": window.days,
                   "timezone": window.timezone, "days_without_data": read["missing_days"]},
        "input": {"path": spec.input.path, "files": [vars(f) for f in read["files"]], "rows": read["rows"],
                  "users": len(inter.users), "items": len(inter.items), "interactions": read["interactions"],
                  "blocklisted_items": int(blocked.sum()), **bad.to_dict()},
        "search": {"u2i": rec.search_mode, **rec.info},
        "tables": {name: {"rows": m["rows"], "files": m["files"]} for name, m in markers.items()},
        "metrics": metrics, "backtest": served, "gate": {"checks": checks, "skipped": opts.skip_gate},
    }
    try:
        with timer.step("publish"):
            publish.begin_publish(out, run_id, date, list(markers))
            for name in markers:
                publish.publish_partition(staged / name / f"dt={date}", out.partition(name, date))
                pause_point(f"published-{name}")
        manifest["timings"] = timer.timings
        manifest["published_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        publish.write_atomic(out.manifest(date), json_dump(manifest))  # the commit point
        pause_point("before-latest")
        newest = publish.set_latest(out, date)  # only now, after every table and the manifest
        publish.end_publish(out, run_id)
        removed = publish.retire(out, spec.output.keep_days, list(publish.TABLES), run_id)
    except BaseException as exc:
        try:
            settle(out, console=False)  # put back the partitions this run replaced
        except OSError as undo:  # its journal stays, and the next run tries again
            logger.bind(console=False).error(f"could not undo the unfinished publish: {undo}")
        if isinstance(exc, OSError):
            raise publish.output_error(exc, out.root) from None
        raise
    logger.info(f"published {date} (latest {newest}); timings "
                + ", ".join(f"{k} {v:.2f}s" for k, v in timer.timings.items())
                + (f"; retired {', '.join(removed)}" if removed else ""))
    return RunResult(spec.name, date, "published", run_id, manifest, out.root)


def check_catalogue(inter: Interactions, blocked: np.ndarray, raw) -> None:
    if len(inter.items) < 2:
        raise InputError(f"only {len(inter.items)} distinct item(s) in the window "
                         f"({raw.rows} rows from {raw.files[0].path}...): nothing to recommend")
    if int((~blocked).sum()) == 0:
        raise InputError(f"all {len(inter.items)} items of the window are blocklisted ([filter] blocklist, "
                         "blocklist_path): nothing to recommend")


def load_blocklist(spec: JobSpec, root: Path) -> list:
    ids = list(spec.filter.blocklist)
    if spec.filter.blocklist_path:
        path = root / spec.filter.blocklist_path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read blocklist {path}: {exc.strerror}") from None
        ids += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return ids


def backtest(out: publish.JobDir, inter: Interactions, prev: str, spec: JobSpec) -> dict:
    """Score the u2i table published for `prev` against what happened since its date."""
    prev_end_us = Window(dt.date.fromisoformat(prev), 1, spec.job.timezone).bounds_us()[1]

    def read_served(users: pa.Array) -> pa.Table:
        return read_arrow(spec.name, "u2i", prev, out.root.parent, columns=["user_id", "item_id", "rank"],
                          where=pc.field("user_id").isin(users))

    result = evaluate.backtest(read_served, prev, inter, prev_end_us, spec.evaluate.k, spec.evaluate.max_users,
                               spec.model.random_state)
    if "recall" in result:
        logger.info(f"backtest of the u2i served on {prev}: recall@{result['k']} {result['recall']:.4f} over "
                    f"{result['users']} returning users")
    else:
        logger.info(f"backtest of {prev} skipped: {result['skipped']}")
    return result


# --- tables --------------------------------------------------------------------------


def u2i_schema(user_type: pa.DataType, item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("user_id", user_type), ("item_id", item_type), ("score", pa.float32()),
                      ("rank", pa.int32()), ("source", pa.string())])


def i2i_schema(item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("item_id", item_type), ("similar_item_id", item_type), ("score", pa.float32()),
                      ("rank", pa.int32())])


def popular_schema(item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("item_id", item_type), ("score", pa.float32()), ("rank", pa.int32())])


def writer(spec: JobSpec, staged: Path, table: str, date: str, schema: pa.Schema) -> publish.TableWriter:
    o = spec.output
    final = staged.parent.parent / table / f"dt={date}"  # <job>/_staging/<run> -> <job>/<table>/dt=D
    return publish.TableWriter(staged / table / f"dt={date}", schema, o.max_rows_per_file,
                               o.row_group_rows, o.compression, first_part=publish.next_part(final))


def long_rows(keys: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten a B x W candidate matrix (valid entries first in each row) to long form."""
    valid = items >= 0
    lengths = valid.sum(axis=1)
    key = np.repeat(keys, lengths)
    rank = (np.cumsum(valid, axis=1)[valid]).astype(np.int32)
    return key, items[valid], rank


def write_u2i(rec: Recaller, spec: JobSpec, staged: Path, date: str, run_id: str, progress: bool) -> dict:
    users_map, items_map = rec.inter.users.values, rec.inter.items.values
    out = writer(spec, staged, "u2i", date, u2i_schema(users_map.type, items_map.type))
    k = spec.recall.u2i.k
    size = spec.recall.u2i.batch_size
    starts = range(0, rec.n_users, size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="u2i", unit="batch", leave=False)
    source_names = pa.array(SOURCES, pa.string())
    for start in starts:
        users = np.arange(start, min(start + size, rec.n_users), dtype=np.int64)
        merged = rec.recommend(users, k)
        check_u2i(rec, users, merged, k)
        user, item, rank = long_rows(users, merged.items)
        valid = merged.items >= 0
        out.write(pa.table({
            "user_id": users_map.take(pa.array(user)), "item_id": items_map.take(pa.array(item)),
            "score": pa.array(merged.scores[valid], pa.float32()), "rank": pa.array(rank, pa.int32()),
            "source": source_names.take(pa.array(merged.source[valid].astype(np.int32))),
        }))
    return out.close(run_id)


def check_u2i(rec: Recaller, users: np.ndarray, merged: Merged, k: int) -> None:
    """Guarantee 3 of DESIGN.md, checked on every batch before it is written."""
    from recall.candidates import allowed_seen_counts

    batch = rec.batch(users)
    target = np.minimum(k, rec.allowed_count - allowed_seen_counts(batch, rec.allowed))
    lengths = merged.lengths()
    valid = merged.items >= 0
    if (lengths != target).any() or not np.isfinite(merged.scores[valid]).all() or (merged.source[valid] < 0).any():
        bad = int(np.flatnonzero(lengths != target)[0]) if (lengths != target).any() else 0
        raise RuntimeError(f"u2i contract broken for user index {users[bad]}: {lengths[bad]} rows, "
                           f"expected {target[bad]}")


def write_i2i(rec: Recaller, spec: JobSpec, staged: Path, date: str, run_id: str) -> dict:
    items_map = rec.inter.items.values
    out = writer(spec, staged, "i2i", date, i2i_schema(items_map.type))
    k = spec.recall.i2i.k
    for start in range(0, rec.n_items, spec.recall.i2i.batch_size):
        items = np.arange(start, min(start + spec.recall.i2i.batch_size, rec.n_items), dtype=np.int64)
        similar, scores = rec.similar_items(items, k)
        key, other, rank = long_rows(items, similar)
        out.write(pa.table({
            "item_id": items_map.take(pa.array(key)), "similar_item_id": items_map.take(pa.array(other)),
            "score": pa.array(scores[similar >= 0], pa.float32()), "rank": pa.array(rank, pa.int32()),
        }))
    return out.close(run_id)


def write_popular(rec: Recaller, spec: JobSpec, staged: Path, date: str, run_id: str) -> dict:
    items_map = rec.inter.items.values
    out = writer(spec, staged, "popular", date, popular_schema(items_map.type))
    k = min(spec.recall.popular.k, rec.popular.items.size)
    out.write(pa.table({
        "item_id": items_map.take(pa.array(rec.popular.items[:k])),
        "score": pa.array(rec.popular.scores[:k], pa.float32()),
        "rank": pa.array(np.arange(1, k + 1, dtype=np.int32)),
    }))
    return out.close(run_id)


def json_dump(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=False, default=str) + "\n"

