"""The nearline refresh (`recall nearline JOB`, run by cron every few minutes through
`[nearline] schedule`): every user active since the nightly run gets a new u2i list, published as
the overlay `u2i_fresh` of the latest published date (recall.store.overlay).

1. Basis: the date `_LATEST` names, the run R its manifest names, R's item side.
2. New rows: those after R's window (its input's dt= partitions after the date, or rows timed
   after the window's end), read and checked as the nightly run checks a window (exit 3).
3. Users: everyone with a valid new row. Their whole window history is the window's input read
   again, only their rows kept, with the same row checks; items new since the nightly run are
   not in the item side (they can be neither folded in nor recommended) and are counted.
4. Lists: each user folded in (recall.kernel.foldin: least squares against R's fixed item
   factors, the spec's weighting and time decay) with history + new rows, then the nightly
   kernel, `recommend()`: R's sources, blend and k, the seen filter holding the new items too.
   Every batch is checked against the u2i contract before it is written.
5. Publish, through the commit protocol in the overlay's lane: each refresh rereads every row
   after the window, so the partition it replaces whole holds every user refreshed since the
   nightly run. A refresh whose input and basis are unchanged since the last one publishes
   nothing ("up to date").

Locks: a refresh holds `_nearline/_lock` (a second one exits 75 at once), never the nightly run's
`_lock`, and the nightly run never takes this one. A nightly run can take an hour; it must never
be refused because a refresh of a few seconds holds the job (its night would be lost until the
next catch-up), and refreshes go on meanwhile against the date already published. They write
disjoint files (the nightly run its tables, manifests, _LATEST and staging; a refresh `u2i_fresh`
and `_nearline/`), each settles and clears only its own staging, and a refresh only reads the
nightly run's files: before it starts and again just before it publishes, it checks that
`_LATEST` and the date's manifest still name its basis, else it publishes nothing and exits 75
(a new date or a forced rerun came out meanwhile: the next refresh works on it). Readers use an
overlay only with the nightly run it was built on, so one that slips past that check never shows.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from recall.errors import EXIT_BUG, InputError, Interrupted, LockBusy, RecallError, taken
from recall.ingest import nearline as ingest
from recall.ingest.nearline import NewRows
from recall.ingest.validate import CleanLog
from recall.ingest.window import Window
from recall.kernel.foldin import FoldIn, fold_batch
from recall.model.matrix import IdMap, decayed
from recall.ops.lock import job_lock
from recall.ops.logs import add_job_file, remove_sink
from recall.run.nightly import new_run_id
from recall.runtime import job_threads
from recall.sources import NAMES
from recall.sources.recommend import contract_violation, recommend
from recall.spec.sections import JobSpec
from recall.store import history, item_side
from recall.store.atomic import read_json
from recall.store.commit import Publication, clear_staging, output_error, settle
from recall.store.item_side import PublishedSide
from recall.store.layout import ITEM_SIDE, SUCCESS, JobDir, job_dir
from recall.store.overlay import (U2I_FRESH, FreshManifest, OverlayDir, overlay_dir, overlay_state,
                                  read_fresh_manifest)
from recall.store.records import Manifest, RunRecord, TableInfo
from recall.store.state import is_published, latest, read_manifest
from recall.store.tables import TableWriter, u2i_rows
from recall.testpoint import pause_point
from recall.timer import Timer
from recall.versions import code_version

SETTLE_S = 2.0  # how long a date the nightly run is republishing is waited for


@dataclass(frozen=True)
class NearlineResult:
    job: str
    date: str
    status: str  # "published" or "up to date"
    run_id: str
    manifest: FreshManifest
    output: Path


@dataclass(frozen=True)
class Basis:
    """What a refresh is built on: the nightly run of the latest published date."""

    date: str
    manifest: Manifest
    published: PublishedSide
    window: Window
    schema: pa.Schema  # the nightly u2i table's, which the overlay keeps

    @property
    def run_id(self) -> str:
        return self.manifest.run_id


@dataclass(frozen=True)
class Refreshed:
    """What writing the lists found: the manifest's `users`, and rows of its `input`."""

    active: int = 0  # users with a valid row after the window
    refreshed: int = 0  # ... of whom the item side knows an item: the overlay's users
    new: int = 0  # active users without a row in the window
    history_rows: int = 0  # the window's rows of the active users
    unknown_item_rows: int = 0  # rows on items the nightly run has not seen (not folded in)

    def users(self) -> dict:
        return {"active": self.active, "refreshed": self.refreshed, "new": self.new,
                "without_known_items": self.active - self.refreshed}


def run_nearline(spec: JobSpec, root: Path, force: bool = False) -> NearlineResult:
    """Lock the job's nearline lane, log to `<job>.nearline.log`, refresh, record the run."""
    job = job_dir(spec, root)
    lane = overlay_dir(job)
    run_id = new_run_id()
    with job_lock(lane.lock_file, f"{spec.name} (nearline)"):  # a loser stops here: no log, no history
        sink = -1
        started = time.time()
        outcome: dict = {"status": "failed", "exit_code": EXIT_BUG}
        date = latest(job) or "-"
        try:
            with logger.contextualize(job=spec.name, date=date, run_id=run_id):
                try:
                    sink = add_job_file(spec.log, f"{spec.name}.nearline", root)
                    result = refresh(spec, root, job, lane, run_id, force)
                    date = result.date
                    outcome = {"status": result.status, "exit_code": 0, "rows": {U2I_FRESH: result.manifest.rows}}
                    return result
                except RecallError as exc:
                    outcome = {"status": "failed", "exit_code": exc.exit_code, "error": exc.line()}
                    logger.bind(console=False).error(f"refresh failed (exit {exc.exit_code}): {exc.line()}")
                    raise
                except BaseException as exc:
                    if isinstance(exc, Interrupted):
                        taken()
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                    logger.bind(console=False).opt(exception=exc).error("refresh failed with an internal error")
                    raise
                finally:
                    clear_staging(lane)
                    history.append(lane, RunRecord(
                        date=date, run_id=run_id, forced=force,
                        started=dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
                        duration_s=round(time.time() - started, 3), **outcome))
        finally:
            remove_sink(sink)


def refresh(spec: JobSpec, root: Path, job: JobDir, lane: OverlayDir, run_id: str, force: bool) -> NearlineResult:
    """Read what is new, fold its users in, publish the overlay (or find it up to date)."""
    timer = Timer()
    start_clean(lane)
    threads = job_threads(spec.nearline.threads or spec.model.threads)
    with timer.step("basis"):
        basis = nightly_basis(job)
    source = ingest.locate(spec.input, basis.window, root)
    fingerprint = f"{basis.run_id}:{spec.spec_hash()}:{source.fingerprint()}"
    current, _ = overlay_state(job, basis.date, basis.run_id)
    if current is not None and current.fingerprint == fingerprint and not force:
        logger.info(f"{basis.date}: the overlay of refresh {current.run_id} is up to date (no new input since)")
        return NearlineResult(spec.name, basis.date, "up to date", current.run_id, current, job.root)
    logger.info(f"refresh {run_id} of {basis.date} (nightly run {basis.run_id}): the rows after "
                f"{basis.window.run_date} in {len(source.after)} file(s), {threads} thread(s)")
    with timer.step("read"):
        new = ingest.rows_after(source, spec.input, basis.window)
        users = IdMap.of(new.rows.user) if new else None
        past = ingest.rows_of_users(source, spec.input, basis.window, users.values) if users else None
    publication = Publication(lane, run_id, date=basis.date)
    try:
        writer = TableWriter(publication.folder(U2I_FRESH), basis.schema, spec.output.max_rows_per_file,
                             spec.output.row_group_rows, spec.output.compression)
        refreshed = write_lists(new, past, users, basis, spec, writer, threads, timer) if new else Refreshed()
        rows = writer.close()
        pause_point("nearline-staged")
        sealed = publication.seal(U2I_FRESH)
    except OSError as exc:
        raise output_error(exc, job.root) from None
    cutoff = new.cutoff_us if new else None
    manifest = FreshManifest(
        job=spec.name, date=basis.date, run_id=run_id, base_run_id=basis.run_id,
        tables={U2I_FRESH: TableInfo(sealed.rows, sealed.files)}, users_refreshed=refreshed.refreshed,
        after=iso_us(basis.window.bounds_us()[1]), cutoff="" if cutoff is None else iso_us(cutoff),
        input={"path": spec.input.path, **(new.to_dict() if new else {"files": [], "rows": 0, "interactions": 0}),
               "history_rows": refreshed.history_rows, "unknown_item_rows": refreshed.unknown_item_rows},
        users=refreshed.users(), fingerprint=fingerprint, spec_hash=spec.spec_hash(), code_version=code_version(),
        threads=threads, timings=timer.timings,
        published_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    still_basis(job, basis)  # the nightly run published another run meanwhile: publish nothing
    publication.publish(manifest, spec.output.keep_days, timer)
    logger.info(f"published the overlay of {basis.date}: {refreshed.refreshed} users refreshed, {rows} rows; "
                "timings " + ", ".join(f"{k} {v:.2f}s" for k, v in timer.top().items()))
    return NearlineResult(spec.name, basis.date, "published", run_id,
                          read_fresh_manifest(job, basis.date) or manifest, job.root)


def start_clean(lane: OverlayDir) -> None:
    """Settle what a killed refresh left (its publish undone, or finished after its manifest),
    then clear the lane's staging. The nightly run's staging is not the lane's and stays."""
    try:
        settle(lane)
    except OSError as exc:
        raise output_error(exc, lane.root) from None
    clear_staging(lane)


def nightly_basis(job: JobDir) -> Basis:
    """The latest published date's nightly run and its item side (exit 3 when there is none;
    75 while the nightly run is republishing that date)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        date = latest(job)
        if date is None:
            raise InputError(f"nothing published for job {job.name} under {job.root.parent}: a refresh updates the "
                             "latest published date", hint="run the nightly job first (recall run)")
        manifest = read_manifest(job, date)
        if manifest is not None and is_published(job, date):
            break
        if time.monotonic() > deadline:
            raise LockBusy(f"job {job.name}: the nightly run is publishing {date} (or died doing so)",
                           hint="the next refresh works on it once it is published (the job's next nightly run "
                                "finishes or undoes a publish that died)")
        time.sleep(0.05)
    if ITEM_SIDE not in manifest.tables:
        raise InputError(f"{job.name} {date} (run {manifest.run_id}, engine {manifest.engine}) has no item side to "
                         "fold users in against", hint="rerun the date with the local engine of this version")
    u2i = job.partition("u2i", date)
    try:
        published = item_side.load(job.partition(ITEM_SIDE, date))
        schema = pq.read_schema(u2i / next(iter((read_json(u2i / SUCCESS) or {})["files"])))
    except (FileNotFoundError, ValueError, KeyError):
        published = None  # a forced rerun swapped the date while it was read
    if published is None or published.run_id != manifest.run_id:
        raise LockBusy(f"job {job.name}: the nightly run is republishing {date}",
                       hint="the next refresh works on the new run")
    window = Window(dt.date.fromisoformat(date), int(manifest.window.get("days") or 1),
                    manifest.window.get("timezone") or "UTC")
    return Basis(date, manifest, published, window, schema)


def still_basis(job: JobDir, basis: Basis) -> None:
    """Exit 75 when the nightly run published another run since the refresh began."""
    date = latest(job)
    manifest = read_manifest(job, date) if date else None
    if date != basis.date or manifest is None or manifest.run_id != basis.run_id:
        now = f"{date} (run {manifest.run_id})" if manifest else str(date)
        raise LockBusy(f"job {job.name}: the nightly run published {now} while refreshing {basis.date} "
                       f"(run {basis.run_id}); nothing published", hint="the next refresh works on the new run")


def write_lists(new: NewRows, past: CleanLog | None, users: IdMap, basis: Basis, spec: JobSpec,
                writer: TableWriter, threads: int, timer: Timer) -> Refreshed:
    """Fold every active user in with their history and new rows, recommend, check, write (in
    user id order)."""
    check_types(new.rows, basis)
    published = basis.published
    with timer.step("histories"):
        rows = new.rows if past is None else concat_logs(past, new.rows)
        now = max(basis.window.bounds_us()[1], new.cutoff_us or 0)  # time decay's "now", as the window end's
        histories, known, unknown = user_histories(rows, users, published, now, spec.model.half_life_days)
    fold = FoldIn.of(published.side.factors, published.fold, published.weight_sum) if published.fold else None
    names = pa.array(NAMES, pa.string())
    size = spec.recall.u2i.batch_size
    for start in range(0, known.size, size):
        chunk = known[start:start + size]
        with timer.step("fold", quiet=True):
            batch = fold_batch(fold, [histories[u] for u in chunk], published.recent_items, published.side.n_items)
        with timer.step("recommend", quiet=True):
            merged = recommend(published.side, batch, published.blend, published.k, threads)
        with timer.step("check", quiet=True):
            broken = contract_violation(published.side, batch, merged, published.k)
        if broken:
            raise RuntimeError(f"u2i contract broken for the refreshed users: {broken}")
        with timer.step("write", quiet=True):
            writer.write(u2i_rows(chunk, merged, users.values, published.item_ids, names))
    in_window = 0 if past is None else len(IdMap.of(past.user))
    return Refreshed(active=len(users), refreshed=int(known.size), new=len(users) - in_window,
                     history_rows=0 if past is None else past.rows, unknown_item_rows=unknown)


def check_types(new: CleanLog, basis: Basis) -> None:
    """The ids after the window have the published run's types (exit 3 otherwise)."""
    for name, ids, published in (("user", new.user, basis.schema.field("user_id").type),
                                 ("item", new.item, basis.published.item_ids.type)):
        if ids.type != published:
            raise InputError(f"{name} ids after the window are {ids.type}, but {published} in the published run "
                             f"{basis.run_id} of {basis.date}")


def concat_logs(a: CleanLog, b: CleanLog) -> CleanLog:
    ts = None if a.ts is None or b.ts is None else np.concatenate([a.ts, b.ts])
    return CleanLog(pa.concat_arrays([a.user, b.user]), pa.concat_arrays([a.item, b.item]), ts,
                    np.concatenate([a.weight, b.weight]))


def user_histories(rows: CleanLog, users: IdMap, published: PublishedSide, now_us: int, half_life_days: float
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, int]:
    """Each user's rows on known items, most recent first (as the nightly run orders them for its
    recent items: by time, else by weight; ties by item), weighted as training weighs them (time
    decay to `now_us`). Returns the histories by user index, the indices of the users with a
    known item (ascending, so in user id order), and the count of rows on unknown items."""
    user = users.index_of(rows.user)
    item = IdMap(published.item_ids).index_of(rows.item)
    weight = decayed(rows.weight, rows.ts, now_us, half_life_days)
    known = item >= 0
    recency = rows.ts if rows.ts is not None else rows.weight
    order = np.lexsort((item[known], -recency[known], user[known]))
    user, item, weight = user[known][order], item[known][order], weight[known][order]
    bounds = np.searchsorted(user, np.arange(len(users) + 1))
    histories = [(item[bounds[u]:bounds[u + 1]], weight[bounds[u]:bounds[u + 1]]) for u in range(len(users))]
    return histories, np.flatnonzero(np.diff(bounds) > 0), int((~known).sum())


def iso_us(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.timezone.utc).isoformat(timespec="seconds")
