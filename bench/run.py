"""Run the pipeline's steps on a generated log, then the peers on the same factors, and compare.

The steps are the local engine's own functions in the nightly run's order (prepare, train, u2i,
i2i, popular, then the commit protocol's seal and publish); nothing here reimplements them. The
time inside each step comes from the run's own step timings (recall.timer.Timer).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bench import gen, peers
from bench.measure import Recorder, cpu_model, machine_busy
from bench.spec import write_job
from recall.engines.local import LocalEngine, write_i2i, write_popular, write_u2i
from recall.ingest.window import Window
from recall.jobs import load_job
from recall.runtime import job_threads
from recall.sources import SOURCES, spec_blend
from recall.store.commit import Publication
from recall.store.layout import JobDir
from recall.store.records import Manifest, TableInfo
from recall.timer import Timer

RUN_DATE = dt.date(2026, 11, 20)
SAMPLE = 5000  # users (and items) whose lists are compared with the peer's

@dataclass
class Options:
    size: str = "small"
    search: str = "exact"  # exact, approx, or both (exact first, then approx on the same factors)
    threads: int = 2
    factors: int = 64
    iterations: int = 10
    k: int = 100
    i2i_k: int = 50
    peers: bool = True
    work: Path = Path("data/bench")
    overrides: list[str] = field(default_factory=list)
    whole: bool = False  # also time whole `recall run`s against the script (bench.whole)
    repeat: int = 2


@dataclass
class Result:
    options: dict
    shape: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    whole: dict = field(default_factory=dict)


def write_spec(opts: Options, size: gen.LogSize, search: str) -> Path:
    root = opts.work.resolve() / opts.size
    return write_job(root / "bench.toml", "bench", size.days, root / "log", {
        "model.factors": opts.factors, "model.iterations": opts.iterations, "model.threads": opts.threads,
        "recall.u2i.k": opts.k, "recall.u2i.search": search,
        "recall.u2i.sources": ["als"],  # the search is what is measured against implicit's recommend
        "recall.i2i.k": opts.i2i_k, "evaluate.holdout_days": 0, "output.path": root / "out", "log.dir": root / "logs"})


def run(opts: Options) -> Result:
    size = gen.SIZES[opts.size]
    root = opts.work.resolve() / opts.size
    gen.generate(root / "log", RUN_DATE, size)
    first = "exact" if opts.search == "both" else opts.search
    spec = load_job(write_spec(opts, size, first), opts.overrides)
    threads = job_threads(spec.model.threads)
    shutil.rmtree(root / "out", ignore_errors=True)
    job = JobDir(root / "out" / spec.name)
    date, run_id = RUN_DATE.isoformat(), "bench-" + time.strftime("%Y%m%dT%H%M%S")
    publication = Publication(job, run_id, date)
    window = Window(RUN_DATE, spec.job.lookback_days, spec.job.timezone)
    engine, how, timer = LocalEngine(spec, root, threads), spec_blend(spec), Timer()
    rec_steps = Recorder(timer)
    res = Result(options={**vars(opts), "work": str(opts.work), "threads": threads})
    busy0, total0, wall0 = *machine_busy(), time.perf_counter()
    step = rec_steps.step
    # the pipeline's own steps, in the pipeline's order (recall.run.nightly.run_date)
    with step("prepare", "read, validate, matrix"):
        data = engine.prepare(window, timer)
    with step("train", "ALS, index build, i2i neighbours"):
        model = engine.fit(data, how, timer)
    mode = model.search.get("u2i", "exact")
    with step(f"u2i ({mode})", "search, merge, check, write"):
        write_u2i(model, how, spec, publication, threads, timer)
    with step("i2i", "write (neighbours come from train)"):
        write_i2i(model, spec, publication)
    with step("popular"):
        write_popular(model, spec, publication)
    with step("publish", "seal, publish, manifest, _LATEST"):
        tables = {name: publication.seal(name) for name in ("u2i", "i2i", "popular")}
        manifest = Manifest(job=spec.name, date=date, run_id=run_id, search=model.search, blend=how.to_dict(),
                            tables={n: TableInfo(m.rows, m.files) for n, m in tables.items()}, timings=timer.timings)
        publication.publish(manifest, spec.output.keep_days)
    pipeline_steps = list(rec_steps.steps)
    tenth = max(1, model.users.n_users // 10)  # bounded memory: the same step on a tenth of the users
    part = dataclasses.replace(model, users=model.users.head(tenth))
    with step(f"u2i memory check ({tenth} users)", "the u2i step again, on a tenth of the users"):
        write_u2i(part, how, spec, Publication(job, run_id + "-tenth", date), threads, Timer())
    del part
    n_users, n_items = model.users.n_users, model.side.n_items
    res.shape = {"users": n_users, "items": n_items, "interactions": int(model.users.seen.nnz),
                 "rows_read": int(data.stats.rows), "u2i_rows": tables["u2i"].rows, "i2i_rows": tables["i2i"].rows}
    sample = np.sort(np.random.default_rng(0).choice(n_users, min(SAMPLE, n_users), replace=False))
    item_sample = np.sort(np.random.default_rng(1).choice(n_items, min(SAMPLE, n_items), replace=False))
    ours = published_lists(job.partition("u2i", date), "user_id", "item_id", model.users_map.values,
                           model.items_map.values, sample, spec.recall.u2i.k)
    if opts.search == "both":
        run_approx(model, spec, engine, how, rec_steps, Publication(job, run_id + "-approx", date), sample, ours, res)
    if opts.peers:
        run_peers(model, spec, rec_steps, sample, item_sample, ours, job.partition("i2i", date), res)
    busy1, total1 = machine_busy()
    wall = time.perf_counter() - wall0
    busy_share = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
    own = sum(s.cpu_s for s in rec_steps.steps)
    res.machine = {"cpu": cpu_model(), "cores_used": threads, "cpus": os.cpu_count(), "wall_s": round(wall, 1),
                   "own_cpu_s": round(own, 1),
                   # other processes' CPU use during the run, in cores (the machine may be shared)
                   "other_load_cores": round(max(0.0, busy_share * (os.cpu_count() or 1) - own / wall), 2),
                   "loadavg_end": os.getloadavg(), "exact_step_peaks": rec_steps.exact_peaks}
    res.steps = [s.to_dict() for s in rec_steps.steps]
    res.summary = summarise(pipeline_steps, rec_steps, res)
    return res


def run_approx(model, spec, engine: LocalEngine, how, rec_steps: Recorder, publication: Publication,
               sample: np.ndarray, ours, res: Result) -> None:
    """The u2i step again on the same factors, with the approximate searcher."""
    spec.recall.u2i.search = "approx"
    with rec_steps.step("u2i index (approx)", "IVF build + recall check on a sample"):
        part, facts = SOURCES["als"].build(model.context)
    approx = dataclasses.replace(model, side=dataclasses.replace(model.side, parts={**model.side.parts, "als": part}))
    with rec_steps.step("u2i (approx)", "search, merge, check, write"):
        write_u2i(approx, how, spec, publication, engine.threads, rec_steps.timer)
    got = published_lists(publication.folder("u2i"), "user_id", "item_id", model.users_map.values,
                          model.items_map.values, sample, spec.recall.u2i.k)
    res.agreement["approx_vs_exact_recall"] = round(overlap(got[0], ours[0]), 4)
    res.agreement["approx_in_run_check"] = facts.get("approx")


def run_peers(fitted, spec, rec_steps: Recorder, sample: np.ndarray, item_sample: np.ndarray, ours, i2i_part: Path,
              res: Result) -> None:
    threads = res.options["threads"]
    users, items = fitted.users.factors, fitted.side.factors
    model = peers.implicit_model(users, items, threads)
    k = spec.recall.u2i.k
    with rec_steps.step("peer: implicit recommend", "all users, filter_already_liked_items"):
        peer_ids, peer_scores = peers.recommend_all(model, fitted.users.seen, k, sample)
    with rec_steps.step("peer: scoring product", "users @ items.T in batches"):
        peers.scoring_product(users, items)
    few = min(len(users), peers.ARGPARTITION_USERS)  # numpy's argpartition is slow: a sample, scaled
    with rec_steps.step(f"peer: product + argpartition ({few} users)", "unfiltered, unsorted top-k"):
        peers.product_topk(users[:few], items, k)
    if spec.recall.i2i.k > 0:
        with rec_steps.step("peer: implicit similar_items", "all items"):
            peer_similar = peers.similar_all(model, spec.recall.i2i.k, item_sample)
        ours_i2i = published_lists(i2i_part, "item_id", "similar_item_id", fitted.items_map.values,
                                   fitted.items_map.values, item_sample, spec.recall.i2i.k)
        res.agreement["i2i_overlap_vs_implicit"] = round(overlap(ours_i2i[0], peer_similar), 4)
    res.agreement.update(topk_agreement(ours, (peer_ids, peer_scores)))
    res.agreement["sample_users"] = int(sample.size)


def published_lists(part: Path, key_col: str, item_col: str, key_map: pa.Array, item_map: pa.Array,
                    keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The published rows of `keys` (matrix indices) as B x k item indices and scores, by rank."""
    table = ds.dataset(part, format="parquet").to_table(
        filter=pc.field(key_col).isin(key_map.take(pa.array(keys))))
    key_idx = np.searchsorted(keys, pc.index_in(table[key_col], value_set=key_map).to_numpy())
    item_idx = pc.index_in(table[item_col], value_set=item_map).to_numpy()
    rank = table["rank"].to_numpy() - 1
    items = np.full((keys.size, k), -1, np.int64)
    scores = np.full((keys.size, k), -np.inf, np.float32)
    items[key_idx, rank] = item_idx
    scores[key_idx, rank] = table["score"].to_numpy()
    return items, scores


def overlap(got: np.ndarray, want: np.ndarray) -> float:
    """Mean share of each row's `want` items (non-pad) that `got` also has."""
    hits = 0
    total = 0
    for g, w in zip(got, want):
        w = w[w >= 0]
        hits += np.intersect1d(g[g >= 0], w).size
        total += w.size
    return hits / total if total else 1.0


def topk_agreement(ours: tuple[np.ndarray, np.ndarray], peer: tuple[np.ndarray, np.ndarray],
                   rel_tol: float = 1e-4) -> dict:
    """Set overlap with the peer, and the share of users whose top-k is identical ties aside:
    the same scores rank by rank (within tolerance), and any item in one list but not the other
    scores the same as the list's k-th (a tie at the cut)."""
    items, scores = ours
    p_items, p_scores = peer
    p_scores = p_scores.astype(np.float32)
    tol = rel_tol * max(1e-6, float(np.nanmax(np.abs(p_scores[np.isfinite(p_scores)]))))
    same_scores = np.all(np.isclose(scores, p_scores, rtol=0, atol=tol) | ~np.isfinite(p_scores), axis=1)
    identical = 0
    for i in range(items.shape[0]):
        a, b = set(items[i][items[i] >= 0].tolist()), set(p_items[i].tolist())
        if a == b:
            identical += 1
            continue
        cut = scores[i][items[i] >= 0].min() if (items[i] >= 0).any() else -np.inf
        diff_ours = [s for it, s in zip(items[i], scores[i]) if it in a - b]
        if same_scores[i] and all(abs(s - cut) <= tol for s in diff_ours):
            identical += 1
    return {"u2i_overlap_vs_implicit": round(overlap(items, p_items), 6),
            "u2i_identical_ties_aside": round(identical / items.shape[0], 6),
            "u2i_max_score_diff": float(np.max(np.abs(np.where(np.isfinite(p_scores), scores - p_scores, 0))))}


WORK = ("als_fit", "als_index", "i2i_search", "als")  # training and search (als: the u2i search); the rest is overhead


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def summarise(pipeline_steps, rec_steps: Recorder, res: Result) -> dict:
    """Ratios to the peers (wall and CPU time) and the share of the run outside training and search."""
    total = sum(s.wall_s for s in pipeline_steps)
    work = sum(v for s in pipeline_steps for key, v in s.inside.items() if key in WORK)
    u2i = next(s for s in pipeline_steps if s.name.startswith("u2i"))
    train = next(s for s in pipeline_steps if s.name == "train")
    search = {"wall": u2i.inside.get("als", 0.0), "cpu": u2i.inside_cpu.get("als", 0.0)}
    out = {"pipeline_wall_s": round(total, 2), "train_and_search_s": round(work, 2),
           "overhead_share": ratio(total - work, total),
           "u2i_search_s": {k: round(v, 2) for k, v in search.items()},
           "u2i_peak_rss_increase_mb": {"all users": round(u2i.peak_rss_mb - u2i.rss_start_mb, 1)}}
    names = {s.name: s for s in rec_steps.steps}
    check = next((s for s in rec_steps.steps if s.name.startswith("u2i memory check")), None)
    if check is not None:
        out["u2i_peak_rss_increase_mb"]["a tenth"] = round(check.peak_rss_mb - check.rss_start_mb, 1)

    def versus(step_name: str, mine: dict[str, float]) -> dict:
        peer = names[step_name]
        return {"wall": ratio(mine["wall"], peer.wall_s), "cpu": ratio(mine["cpu"], peer.cpu_s)}

    if "peer: implicit recommend" in names:
        part = next(s for s in rec_steps.steps if s.name.startswith("peer: product + argpartition"))
        scale = res.shape["users"] / min(res.shape["users"], peers.ARGPARTITION_USERS)
        out["u2i_search_vs_implicit_recommend"] = versus("peer: implicit recommend", search)
        out["u2i_search_vs_scoring_product"] = versus("peer: scoring product", search)
        out["u2i_step_vs_implicit_recommend"] = versus("peer: implicit recommend",
                                                       {"wall": u2i.wall_s, "cpu": u2i.cpu_s})
        out["product_argpartition_scaled_s"] = {"wall": round(part.wall_s * scale, 2),
                                                "cpu": round(part.cpu_s * scale, 2)}
    if "peer: implicit similar_items" in names:
        i2i = {"wall": train.inside.get("i2i_search", 0.0), "cpu": train.inside_cpu.get("i2i_search", 0.0)}
        out["i2i_search_s"] = {k: round(v, 2) for k, v in i2i.items()}
        out["i2i_search_vs_implicit_similar_items"] = versus("peer: implicit similar_items", i2i)
    if "u2i (approx)" in names and "u2i (exact)" in names:
        approx = names["u2i (approx)"]
        mine = {"wall": approx.inside.get("als", 0.0), "cpu": approx.inside_cpu.get("als", 0.0)}
        out["u2i_search_approx_s"] = {k: round(v, 2) for k, v in mine.items()}
        out["approx_speedup"] = {k: ratio(search[k], mine[k]) for k in mine}
    return out
