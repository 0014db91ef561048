"""The nightly run: one job, one date, from the interaction log to published recall tables.

`run_job` holds the job's lock, logs to its file and records the run in its history; `run_date`
is the run itself, the same for every engine.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from loguru import logger

from recall import engines
from recall.engines.base import Engine
from recall.errors import EXIT_BUG, Interrupted, RecallError, taken
from recall.evaluate.backtest import score_served
from recall.evaluate.gate import enforce_gate, gate_checks
from recall.evaluate.holdout import holdout_metrics
from recall.ingest.window import Window
from recall.kernel.blend import Blend
from recall.ops import monitor
from recall.ops.lock import job_lock
from recall.ops.logs import add_job_file, remove_sink
from recall.run.autotune import tuned_spec
from recall.runtime import job_threads
from recall.sources import fixed_default, spec_blend, unmeasured
from recall.spec.sections import JobSpec
from recall.store import history
from recall.store.commit import Publication, clear_staging, output_error, settle
from recall.store.layout import TABLES, JobDir, job_dir
from recall.store.reader import read_arrow
from recall.store.records import Holdout, Manifest, Marker, RunRecord, TableInfo
from recall.store.repair import check_links, repair
from recall.store.state import is_published, previous_published, read_manifest
from recall.timer import Timer
from recall.versions import code_version, library_versions


@dataclass(frozen=True)
class RunOptions:
    date: dt.date
    root: Path
    force: bool = False
    skip_gate: bool = False
    progress: bool = False


@dataclass(frozen=True)
class RunResult:
    job: str
    date: str
    status: str  # "published" or "skipped"
    run_id: str
    manifest: Manifest | None = None
    output: Path | None = None


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_job(spec: JobSpec, opts: RunOptions) -> RunResult:
    """Lock the job, log to its file, run the date, record it in the job's history and its
    monitoring textfile; then, the lock released, run the spec's on_success / on_failure command."""
    job = job_dir(spec, opts.root)
    run_id = new_run_id()
    date = opts.date.isoformat()
    record: RunRecord | None = None
    try:
        with job_lock(job.lock_file, spec.name):  # a loser stops here: no log, no history
            sink = -1
            started = time.time()
            outcome: dict = {"status": "failed", "exit_code": EXIT_BUG}
            try:
                with logger.contextualize(job=spec.name, date=date, run_id=run_id):
                    try:
                        sink = add_job_file(spec.log, spec.name, opts.root)
                        result = run_date(spec, opts, job, run_id)
                        outcome = {"status": result.status, "exit_code": 0,
                                   "rows": result.manifest.rows if result.manifest else {}}
                        return result
                    except (RecallError, Interrupted) as exc:
                        published = committed(job, date, run_id)
                        if isinstance(exc, Interrupted):
                            taken()
                            exc.hint = (f"{spec.name} {date} had been published by this run before it stopped"
                                        if published else f"{spec.name} {date} was not published; the previous "
                                        "tables are as they were; rerun the date")
                        outcome = {"status": "published" if published else "failed", "exit_code": exc.exit_code,
                                   "error": exc.line()}
                        logger.bind(console=False).error(f"run failed (exit {exc.exit_code}): {exc.line()}")
                        raise
                    except BaseException as exc:
                        outcome["error"] = f"{type(exc).__name__}: {exc}"
                        outcome["status"] = "published" if committed(job, date, run_id) else "failed"
                        logger.bind(console=False).opt(exception=exc).error("run failed with an internal error")
                        raise
                    finally:
                        clear_staging(job)
                        record = RunRecord(
                            date=date, run_id=run_id, forced=opts.force,
                            started=dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
                            duration_s=round(time.time() - started, 3), **outcome)
                        history.append(job, record)
                        monitor.write_textfile(spec, opts.root, job)
            finally:
                remove_sink(sink)
    finally:
        if record is not None:
            monitor.run_command(spec, opts.root, job, record)


def committed(job: JobDir, date: str, run_id: str) -> bool:
    """Whether this run's manifest of `date` is in place (the run got past its commit point)."""
    try:
        manifest = read_manifest(job, date)
    except OSError:
        return False
    return manifest is not None and manifest.run_id == run_id


def run_date(spec: JobSpec, opts: RunOptions, job: JobDir, run_id: str) -> RunResult:
    """Read, evaluate, train, stage, gate, publish: the run of one date."""
    date = opts.date.isoformat()
    start_clean(job)
    if is_published(job, date) and not opts.force:
        logger.info(f"{date} is already published; skipped (use --force to replace it)")
        return RunResult(spec.name, date, "skipped", run_id, read_manifest(job, date), job.root)
    threads = job_threads(spec.model.threads)
    window = Window(opts.date, spec.job.lookback_days, spec.job.timezone)
    logger.info(f"run {run_id}: window {window.start}..{window.run_date} ({window.timezone}), spec {spec.source}, "
                f"engine {spec.job.engine}, {threads} thread(s)" + (", forced" if opts.force else ""))
    timer = Timer()
    previous = previous_published(job, date)  # the backtest's subject, the gate's reference
    before = read_manifest(job, previous) if previous else None
    publication = Publication(job, run_id, date)
    with engines.create(spec, opts.root, threads, opts.progress) as engine:
        data = engine.prepare(window, timer)
        stats = engine.input_stats(data)
        logger.bind(say=True).info(
            f"{stats.rows:,} rows from {len(stats.files)} file(s) in {window.start}..{window.run_date}, "
            f"{stats.bad.bad_rows:,} bad; {stats.users:,} users x {stats.items:,} items")
        with timer.step("backtest"):
            served = backtest(engine, data, job, previous, spec) if previous else None
        spec, tuned = tuned_spec(engine, data, spec, job, date, run_id, served, timer)
        engine = engine.with_spec(spec)
        metrics, how, chosen = evaluate(engine, data, spec, spec_blend(spec), before, timer)
        with timer.step("train"):
            model = engine.fit(data, how, timer)  # only the sources the blend uses
        search, tables = stage(engine, model, how, publication, timer)
    if before is not None and before.rebuilt and metrics is not None:
        logger.warning(f"the [gate] max_recall_drop check has no reference: the manifest of {previous} was rebuilt "
                       "from its tables' _SUCCESS markers, without its metrics")
    checks = gate_checks(spec.gate, metrics, before.metrics if before else None, tables["u2i"].rows)
    enforce_gate(checks, opts.skip_gate)
    manifest = Manifest(
        job=spec.name, date=date, run_id=run_id, engine=spec.job.engine, spec=spec.source,
        spec_hash=spec.spec_hash(), code_version=code_version(), libraries=library_versions(),
        seed=spec.model.random_state, threads=threads, forced=opts.force, skip_gate=opts.skip_gate,
        window={"start": window.start.isoformat(), "end": date, "days": window.days, "timezone": window.timezone,
                "days_without_data": stats.missing_days},
        input=stats.to_dict(), search=search, blend=how.to_dict(), blend_source=chosen, tuned=tuned, metrics=metrics,
        backtest=served,
        gate={"checks": [vars(c) for c in checks], "skipped": opts.skip_gate},
        tables={name: TableInfo(m.rows, m.files) for name, m in tables.items()},
        timings=timer.timings, published_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    newest, removed = publication.publish(manifest, spec.output.keep_days, timer)
    logger.info(f"published {date} (latest {newest}); timings "
                + ", ".join(f"{k} {v:.2f}s" for k, v in timer.top().items())
                + (f"; retired {', '.join(removed)}" if removed else ""))
    return RunResult(spec.name, date, "published", run_id, manifest, job.root)


def stage(engine: Engine, model, how: Blend, publication: Publication, timer: Timer) -> tuple[dict, dict[str, Marker]]:
    """The engine writes the tables into staging; each is then sealed (numbered, marked)."""
    try:
        search = engine.write_tables(model, how, publication, timer)
        folder = publication.job.staging(publication.run_id)
        names = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=table_order)
        tables = {name: publication.seal(name) for name in names}
    except OSError as exc:
        raise output_error(exc, publication.job.root) from None
    logger.info("staged " + ", ".join(f"{name} {m.rows} rows" for name, m in tables.items()))
    return search, tables


def table_order(name: str) -> tuple[int, str]:
    return (TABLES.index(name) if name in TABLES else len(TABLES), name)


def start_clean(job: JobDir) -> None:
    """Refuse links planted in the job folder; settle publishes a killed run left behind, clear
    its staging; rebuild state files that hold garbage (each said on stderr)."""
    check_links(job)
    try:
        settle(job)
        for note in repair(job):
            logger.warning(note)
    except OSError as exc:
        error = output_error(exc, job.root)
        error.hint = ("this run had not started: it published nothing; fix space or permissions there (an earlier run's "
                      "publish is settled, and state files that hold garbage are rebuilt, before a run starts) and "
                      "rerun the date")
        raise error from None
    leftovers = clear_staging(job)
    if leftovers:
        logger.info(f"cleared {len(leftovers)} staging folder(s) left by earlier runs")


def evaluate(engine: Engine, data, spec: JobSpec, how: Blend, previous: Manifest | None,
             timer: Timer) -> tuple[Holdout | None, Blend, str]:
    """The holdout: a second model fitted without the held-out part, scored per source and merged.
    With blend = "auto" the blend is chosen there too; without a holdout to choose on, the last
    chosen blend is kept (else ALS and recent popularity, the cheap sources: nothing is trained
    for a blend nobody measured). Returns the metrics, the blend to publish and where it came from."""
    auto = spec.recall.u2i.blend == "auto"
    if spec.evaluate.holdout_days > 0:
        with timer.step("evaluate"):
            held = engine.holdout(data, timer, how.sources)
            if held is None:
                logger.warning("holdout evaluation skipped: the holdout or the training part is empty")
            else:
                metrics, chosen = holdout_metrics(held, how, auto, spec.model.random_state, fixed_default(spec))
                logger.bind(say=True).info(f"holdout recall@{metrics.k} {metrics.merged.recall:.4f} "
                                           f"(popular baseline {metrics.popular_baseline.recall:.4f})")
                return metrics, chosen, "chosen on the holdout" if auto else "the spec's"
    if auto and previous is not None and previous.blend.get("mode") == "weighted" \
            and set(previous.blend["sources"]) <= set(how.sources) and previous.blend_source != "the spec's":
        return None, Blend.from_dict(previous.blend), f"kept from {previous.date} (no holdout to choose on)"
    if auto:
        return None, unmeasured(spec), "als and recent_popular (nothing measured to choose on)"
    return None, how, "the spec's"


def backtest(engine: Engine, data, job: JobDir, prev: str, spec: JobSpec) -> dict:
    """Score the u2i table published for `prev` against what its users did since."""
    since_us = Window(dt.date.fromisoformat(prev), 1, spec.job.timezone).bounds_us()[1]
    returning = engine.returning(data, since_us)
    if isinstance(returning, str):
        logger.info(f"backtest of {prev} skipped: {returning}")
        return {"date": prev, "skipped": returning}

    def read_served(users: pa.Array) -> pa.Table:
        # the nightly table alone: a nearline overlay leaves out what its users did since, the
        # very items the backtest counts
        return read_arrow(spec.name, "u2i", prev, job.root.parent, columns=["user_id", "item_id", "rank"],
                          where=pc.field("user_id").isin(users), fresh=False)

    result = score_served(returning, read_served, prev, spec.evaluate.k, engine.input_stats(data).items)
    if "recall" in result:
        logger.bind(say=True).info(f"backtest of the u2i served on {prev}: recall@{result['k']} {result['recall']:.4f} over "
                    f"{result['users']} returning users")
    else:
        logger.info(f"backtest of {prev} skipped: {result['skipped']}")
    return result
