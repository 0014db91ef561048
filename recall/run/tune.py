"""`recall tune`: seeded search on the holdout over ALS hyperparameters, source options and the blend.

Stage 1 fits ALS alone for sampled hyperparameters and keeps the best by recall@K. Stage 2 fits
every source once with those, tries each source's options, then searches blend weights over
the precomputed lists (cheap: no refits). Trials run in a seeded order until the time budget or
the trial cap is spent, so a rerun with the same seed tries the same settings in the same order.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from recall.engines.local import Model, fit_holdout
from recall.evaluate.holdout import HoldoutSet
from recall.ingest.prepare import Prepared
from recall.kernel.blend import Blend
from recall.model.itemknn import cooccurrence_neighbours, cosine_neighbours
from recall.model.popularity import popularity, recent_items
from recall.sources import NAMES
from recall.spec.sections import JobSpec
from recall.store.records import Scores

ALS_GRID = {
    "factors": [32, 64, 128],
    "regularization": [0.01, 0.05, 0.1, 0.3, 1.0],
    "alpha": [0.5, 1.0, 2.0, 5.0, 10.0],
    "iterations": [10, 15, 25],
    "weighting": ["none", "log", "bm25"],
}
RECENT_DAYS = [1, 3, 7, 14, 30]
RECENT_HALF_LIFE = [1.0, 3.0, 7.0]
RECENT_ITEMS = [1, 3, 5, 10, 20]
SIMILARITIES = ["bm25", "cosine", "als"]
BLEND_WEIGHTS = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]
ALL_SOURCES = list(NAMES)


@dataclass
class Trial:
    stage: str
    params: dict
    recall: float
    ndcg: float
    seconds: float
    metrics: Scores | None = field(default=None, repr=False)


@dataclass
class TuneResult:
    trials: list[Trial] = field(default_factory=list)
    best_model: dict = field(default_factory=dict)
    best_sources: dict = field(default_factory=dict)  # section -> {key: value}
    best_blend: dict = field(default_factory=dict)
    merged: Scores | None = None
    single: dict[str, Scores] = field(default_factory=dict)  # source -> metrics, with the tuned options
    split: str = ""


def als_candidates(spec: JobSpec, rng: np.random.Generator) -> Iterator[dict]:
    """The spec's own settings first, then distinct random grid points."""
    current = {key: getattr(spec.model, key) for key in ALS_GRID}
    yield current
    grid = [dict(zip(ALS_GRID, values)) for values in itertools.product(*ALS_GRID.values())]
    for i in rng.permutation(len(grid)):
        if grid[i] != current:
            yield grid[i]


def with_model(spec: JobSpec, params: dict, sources: list[str]) -> JobSpec:
    out = copy.deepcopy(spec)
    for key, value in params.items():
        setattr(out.model, key, value)
    out.recall.u2i.sources = sources
    return out


def tune(data: Prepared, spec: JobSpec, threads: int, budget_s: float, max_trials: int, seed: int,
         log=print) -> TuneResult:
    rng = np.random.default_rng(seed)
    result = TuneResult()
    deadline = time.monotonic() + budget_s
    stage1_end = time.monotonic() + budget_s * 0.6

    # stage 1: ALS hyperparameters, ALS alone
    best = None
    for n, params in enumerate(als_candidates(spec, rng)):
        if n >= max_trials or (n > 0 and time.monotonic() > stage1_end):
            break
        start = time.monotonic()
        fitted = fit_holdout(data, with_model(spec, params, ["als"]), ("als",), threads)
        if fitted is None:
            raise ValueError("the holdout split is empty: nothing to tune on")
        held = fitted[0]
        result.split = held.description
        metrics = held.score(held.source_lists(("als",))["als"].items)
        trial = Trial("als", params, metrics.recall, metrics.ndcg, round(time.monotonic() - start, 2))
        result.trials.append(trial)
        log(f"als {params}: recall {trial.recall:.4f} ({trial.seconds:.1f}s)")
        if best is None or (trial.recall, trial.ndcg) > (best.recall, best.ndcg):
            best = trial
    result.best_model = best.params

    # stage 2: every source with the best ALS, then each source's options, then the blend
    held, model = fit_holdout(data, with_model(spec, best.params, ALL_SOURCES), tuple(ALL_SOURCES), threads)
    lists = held.source_lists(tuple(ALL_SOURCES))
    held = tune_sources(held, model, lists, result, log)
    result.single = {name: held.score(c.items) for name, c in lists.items()}

    def score(blend: dict) -> Trial:
        start = time.monotonic()
        how = Blend(blend["blend"], tuple(blend["sources"]), blend.get("weights", {}))
        metrics = held.score(held.merged(lists, how))
        trial = Trial("blend", blend, metrics.recall, metrics.ndcg, round(time.monotonic() - start, 2), metrics)
        result.trials.append(trial)
        return trial

    budget_left = lambda: time.monotonic() < deadline and len(result.trials) < 100 * max_trials  # noqa: E731
    best_blend = coordinate_ascent(lists, result.single, score, budget_left)
    result.best_blend, result.merged = best_blend.params, best_blend.metrics
    log(f"best blend {best_blend.params}: recall {best_blend.recall:.4f}")
    return result


def tune_sources(held: HoldoutSet, model: Model, lists: dict, result: TuneResult, log) -> HoldoutSet:
    """Pick each non-ALS source's own options by its own recall; update `lists` in place and
    return the holdout set with the chosen parts."""
    ctx = model.context
    train = ctx.inter

    def trial(name: str, params: dict, part, recent: np.ndarray | None = None, record: bool = True) -> HoldoutSet:
        start = time.monotonic()
        users = held.users if recent is None else dataclasses.replace(held.users, recent=recent)
        variant = dataclasses.replace(held, side=dataclasses.replace(held.side, parts={**held.side.parts, name: part}),
                                      users=users)
        if record:
            metrics = variant.score(variant.source_lists((name,))[name].items)
            result.trials.append(Trial(name, params, metrics.recall, metrics.ndcg, round(time.monotonic() - start, 2)))
        return variant

    for days, half_life in itertools.product(RECENT_DAYS, RECENT_HALF_LIFE):
        trial("recent_popular", {"days": days, "half_life_days": half_life},
              popularity(train, ctx.allowed, ctx.end_us, days, half_life))
        if train.ts is None:
            break  # without time every window is the whole log: one setting is enough
    depth = ctx.spec.recall.item_based.neighbours
    related = {kind: cooccurrence_neighbours(ctx.counts, kind, depth, ctx.allowed) for kind in ("bm25", "cosine")}
    related["als"] = cosine_neighbours(ctx.factors.items, ctx.allowed, depth, ctx.threads)
    for kind, r in itertools.product(SIMILARITIES, RECENT_ITEMS):
        trial("item_based", {"recent_items": r, "neighbours": depth, "similarity": kind}, related[kind],
              recent_items(train, r))
    for name in ("recent_popular", "item_based"):
        mine = [t for t in result.trials if t.stage == name]
        best = max(mine, key=lambda t: (t.recall, t.ndcg))
        result.best_sources[name] = best.params
        log(f"{name} {best.params}: recall {best.recall:.4f}")
    rp, ib = result.best_sources["recent_popular"], result.best_sources["item_based"]
    held = trial("recent_popular", rp, popularity(train, ctx.allowed, ctx.end_us, rp["days"], rp["half_life_days"]),
                 record=False)
    held = trial("item_based", ib, related[ib["similarity"]], recent_items(train, ib["recent_items"]), record=False)
    lists.update(held.source_lists(("recent_popular", "item_based")))
    return held


def coordinate_ascent(lists: dict, single: dict, score, more) -> Trial:
    """Blend weights by coordinate ascent from the best single source: change one source's weight
    at a time over BLEND_WEIGHTS, keep what improves recall (then NDCG), until nothing does.

    The ordered blend (sources by their own recall) is tried too; deterministic, no refits.
    """
    names = sorted(lists, key=lambda n: (-single[n].recall, n))
    best = score({"blend": "ordered", "sources": names})
    weights = {n: 0.0 for n in names}
    weights[names[0]] = 1.0

    def blend_of(w: dict) -> dict:
        used = [n for n in names if w[n] > 0]
        return {"blend": "weighted", "sources": used, "weights": {n: w[n] for n in used}}

    current = score(blend_of(weights))
    best = max(best, current, key=lambda t: (t.recall, t.ndcg))
    improved = True
    while improved and more():
        improved = False
        for name in names:
            for value in BLEND_WEIGHTS:
                if value == weights[name] or not more():
                    continue
                trial_weights = {**weights, name: value}
                if not any(trial_weights.values()):
                    continue
                trial = score(blend_of(trial_weights))
                if (trial.recall, trial.ndcg) > (current.recall, current.ndcg):
                    weights, current, improved = trial_weights, trial, True
    return max(best, current, key=lambda t: (t.recall, t.ndcg))


def snippet(result: TuneResult) -> str:
    """The best settings as TOML to paste into the job spec."""
    def value(v) -> str:
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = ["[model]"] + [f"{k} = {value(v)}" for k, v in result.best_model.items()]
    blend = result.best_blend
    lines += ["", "[recall.u2i]", f"sources = {value(blend['sources'])}", f"blend = {value(blend['blend'])}"]
    if blend.get("weights"):
        lines.append(f"weights = {value(blend['weights'])}")
    for name in ("recent_popular", "item_based"):
        if name in blend["sources"]:
            lines += ["", f"[recall.{name}]"] + [f"{k} = {value(v)}" for k, v in result.best_sources[name].items()]
    return "\n".join(lines) + "\n"


def table(result: TuneResult) -> str:
    rows = [f"{'stage':<15} {'recall':>8} {'ndcg':>8} {'secs':>6}  params"]
    for t in result.trials:
        rows.append(f"{t.stage:<15} {t.recall:8.4f} {t.ndcg:8.4f} {t.seconds:6.1f}  {t.params}")
    return "\n".join(rows)
