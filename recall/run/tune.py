"""Searching a job's settings on its holdout: the ALS settings, each source's options, the blend.

Used by `recall tune` (by hand, with a report and a TOML snippet) and by the nightly run's
periodic search (`recall.run.autotune`, within a time budget). Every trial is scored on the
holdout's choosing users; the result is reported on the others, so what is reported was not
what was tuned on. Trials run in a seeded order until the budget or the trial cap is spent, so a
rerun with the same seed tries the same settings in the same order.

Stage 1 fits ALS alone for grid points (the spec's own settings first). Stage 2 fits every
source once with the best of them, tries each source's options by rebuilding only that source's
part, then chooses the blend weights on the precomputed lists (no refits).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomlkit

from recall.engines.local import Model, fit_holdout
from recall.evaluate.choose import blend_of, fusion, halves, search_weights
from recall.evaluate.holdout import HoldoutSet, paired, take
from recall.evaluate.metrics import relevant_rows
from recall.ingest.prepare import Prepared
from recall.kernel.blend import Blend
from recall.model.itemknn import cooccurrence_neighbours
from recall.model.popularity import popularity, recent_items
from recall.sources import NAMES
from recall.sources.ease import build as build_ease
from recall.spec.sections import JobSpec
from recall.store.atomic import write_atomic
from recall.store.records import Scores

ALS_GRID = {
    "factors": [32, 64, 128],
    "regularization": [0.01, 0.1, 1.0],
    "alpha": [1.0, 5.0, 20.0],
    "weighting": ["none", "log", "bm25"],
}
RECENT_DAYS = [1, 3, 7, 14, 30]
RECENT_HALF_LIFE = [1.0, 3.0, 7.0]
RECENT_ITEMS = [1, 3, 5, 10, 20, 50, 100]
SIMILARITIES = ["bm25", "cosine"]  # co-occurrence neighbours (no ALS refit per trial)
EASE_L2 = [50.0, 200.0, 500.0, 1000.0]
NEIGHBOURS = [50, 100]


@dataclass
class Trial:
    stage: str
    params: dict
    recall: float  # on the choosing users
    ndcg: float
    seconds: float
    per_user: np.ndarray = field(default=None, repr=False)  # recall of each choosing user


def adopted(trials: list[Trial], base: Trial) -> Trial:
    """The best trial if it beats `base` (the spec's own settings) measurably: by more than one
    standard error of their paired per-user difference. A small holdout's noise changes nothing."""
    best = max(trials, key=lambda t: (t.recall, t.ndcg))
    if best is base:
        return base
    gap = paired(best.per_user, base.per_user)
    return best if gap["difference"] > gap["se"] else base


@dataclass
class TuneResult:
    trials: list[Trial] = field(default_factory=list)
    best_model: dict = field(default_factory=dict)  # [model] key -> value
    best_sources: dict = field(default_factory=dict)  # source section -> {key: value}
    best_blend: Blend | None = None
    merged: Scores | None = None  # the tuned blend on the reporting users
    single: dict[str, Scores] = field(default_factory=dict)  # each source, tuned, on the reporting users
    split: str = ""
    users: tuple[int, int] = (0, 0)  # choosing, reporting

    def settings(self) -> dict[str, Any]:
        """What was chosen, as spec keys ("model.factors", "recall.item_based.similarity", ...)."""
        out = {f"model.{k}": v for k, v in self.best_model.items()}
        for section, values in self.best_sources.items():
            out.update({f"recall.{section}.{k}": v for k, v in values.items()})
        return out


def with_settings(spec: JobSpec, settings: dict[str, Any]) -> JobSpec:
    """A copy of `spec` with spec keys ("section.sub.key") set."""
    out = copy.deepcopy(spec)
    for key, value in settings.items():
        *path, name = key.split(".")
        node = out
        for part in path:
            node = getattr(node, part)
        setattr(node, name, value)
    return out


def als_candidates(spec: JobSpec, rng: np.random.Generator, fixed: frozenset[str]) -> Iterator[dict]:
    """The spec's own settings first, then distinct random grid points (keys in `fixed` never vary)."""
    current = {key: getattr(spec.model, key) for key in ALS_GRID}
    yield current
    grid = [dict(zip(ALS_GRID, values)) for values in itertools.product(*ALS_GRID.values())]
    seen = [current]
    for i in rng.permutation(len(grid)):
        point = {k: (current[k] if f"model.{k}" in fixed else v) for k, v in grid[i].items()}
        if point not in seen:
            seen.append(point)
            yield point


def search(data: Prepared, spec: JobSpec, threads: int, budget_s: float, max_trials: int, seed: int,
           log: Callable[[str], None] = print, fixed: frozenset[str] = frozenset()) -> TuneResult:
    """Tune `spec` on `data`'s holdout; keys in `fixed` (set explicitly in the spec) keep their value."""
    rng = np.random.default_rng(seed)
    result = TuneResult()
    deadline = time.monotonic() + budget_s
    stage1_end = time.monotonic() + budget_s * 0.6

    # stage 1: ALS settings, ALS alone, scored on the choosing users
    for n, params in enumerate(als_candidates(spec, rng, fixed)):
        if n >= max_trials or (n > 0 and time.monotonic() > stage1_end):
            break
        start = time.monotonic()
        fitted = fit_holdout(data, with_settings(spec, {f"model.{k}": v for k, v in params.items()}), ("als",),
                             threads)
        if fitted is None:
            raise ValueError("the holdout split is empty: nothing to tune on")
        held = fitted[0]
        choose, _ = halves(held.evaluated.size, seed)
        part, lists = held.subset(choose), held.source_lists(("als",))["als"].items[choose]
        metrics = part.score(lists)
        trial = Trial("als", params, metrics.recall, metrics.ndcg, round(time.monotonic() - start, 2),
                      part.recalls(lists))
        result.trials.append(trial)
        log(f"als {params}: recall {trial.recall:.4f} ({trial.seconds:.1f}s)")
    best = adopted(result.trials, result.trials[0])
    result.best_model = {k: v for k, v in best.params.items() if v != getattr(spec.model, k)}

    # stage 2: every source with the best ALS, each source's options, then the blend
    tuned = with_settings(spec, {f"model.{k}": v for k, v in best.params.items()})
    held, model = fit_holdout(data, tuned, NAMES, threads)
    result.split = held.description
    choose, report = halves(held.evaluated.size, seed)
    result.users = (int(choose.size), int(report.size))
    held = tune_sources(held, model, choose, result, fixed, log, deadline)
    lists = held.source_lists(NAMES)
    _, keys, count = relevant_rows(held.evaluated, held.relevant, held.side.n_items)
    fused = fusion(lists, keys, count, held.side.n_items, held.k, held.threads)
    result.best_blend = blend_of(search_weights(fused.take(choose)))
    part, mine = held.subset(report), take(lists, report)
    result.single = {name: part.score(c.items) for name, c in mine.items()}
    result.merged = part.score(part.merged(mine, result.best_blend))
    log(f"best blend {result.best_blend.weights}: recall {result.merged.recall:.4f} on the reporting users")
    return result


def tune_sources(held: HoldoutSet, model: Model, choose: np.ndarray, result: TuneResult, fixed: frozenset[str],
                 log: Callable[[str], None], deadline: float) -> HoldoutSet:
    """Pick each source's own options by its own recall on the choosing users, rebuilding only
    that source's part; returns the holdout set with the chosen parts."""
    ctx = model.context
    train = ctx.inter

    def variant(name: str, part, recent: np.ndarray | None = None) -> HoldoutSet:
        users = held.users if recent is None else dataclasses.replace(held.users, recent=recent)
        side = dataclasses.replace(held.side, parts={**held.side.parts, name: part})
        return dataclasses.replace(held, side=side, users=users)

    def trial(name: str, params: dict, candidate: HoldoutSet) -> None:
        start = time.monotonic()
        part, lists = candidate.subset(choose), candidate.source_lists((name,))[name].items[choose]
        metrics = part.score(lists)
        result.trials.append(Trial(name, params, metrics.recall, metrics.ndcg, round(time.monotonic() - start, 2),
                                   part.recalls(lists)))

    rp = ctx.spec.recall.recent_popular
    for days, half_life in [(rp.days, rp.half_life_days), *itertools.product(RECENT_DAYS, RECENT_HALF_LIFE)]:
        if time.monotonic() > deadline or train.ts is None:
            break  # without time every window is the whole log: nothing to choose
        params = {"days": days if "recall.recent_popular.days" not in fixed else rp.days,
                  "half_life_days": half_life if "recall.recent_popular.half_life_days" not in fixed else rp.half_life_days}
        trial("recent_popular", params, variant("recent_popular", popularity(train, ctx.allowed, ctx.end_us, **params)))
    ib = ctx.spec.recall.item_based
    similarities = [ib.similarity] if "recall.item_based.similarity" in fixed or ib.similarity == "als" else \
        [ib.similarity, *(x for x in SIMILARITIES if x != ib.similarity)]
    depths = [ib.recent_items] if "recall.item_based.recent_items" in fixed else \
        [ib.recent_items, *(r for r in RECENT_ITEMS if r != ib.recent_items)]
    widths = [ib.neighbours] if "recall.item_based.neighbours" in fixed else \
        [ib.neighbours, *(n for n in NEIGHBOURS if n != ib.neighbours)]
    related = {}
    for kind, width in itertools.product(similarities, widths):
        if time.monotonic() > deadline and related:
            break
        related[kind, width] = held.side.parts["item_based"] if (kind, width) == (ib.similarity, ib.neighbours) \
            else cooccurrence_neighbours(ctx.counts, kind, width, ctx.allowed, ib.max_user_items, ctx.threads)
        for r in depths:
            trial("item_based", {"recent_items": r, "similarity": kind, "neighbours": width},
                  variant("item_based", related[kind, width], recent_items(train, r)))
    ease = ctx.spec.recall.ease
    ridges = [] if "recall.ease.l2" in fixed else [ease.l2, *(x for x in EASE_L2 if x != ease.l2)]
    for l2 in ridges:
        if time.monotonic() > deadline and l2 != ease.l2:
            break
        part = held.side.parts["ease"] if l2 == ease.l2 else \
            build_ease(dataclasses.replace(ctx, spec=with_settings(ctx.spec, {"recall.ease.l2": l2})))[0]
        trial("ease", {"l2": l2}, variant("ease", part))
    for name in ("recent_popular", "item_based", "ease"):
        mine = [t for t in result.trials if t.stage == name]
        if not mine:
            continue
        best = adopted(mine, mine[0])  # the first trial is the spec's own options
        current = {k: getattr(getattr(ctx.spec.recall, name), k) for k in best.params}
        result.best_sources[name] = {k: v for k, v in best.params.items() if v != current[k]}
        log(f"{name} {best.params}: recall {best.recall:.4f}")
        if name == "recent_popular":
            held = variant(name, popularity(train, ctx.allowed, ctx.end_us, **best.params))
        elif name == "ease":
            if best is not mine[0]:
                held = variant(name, build_ease(dataclasses.replace(
                    ctx, spec=with_settings(ctx.spec, {"recall.ease.l2": best.params["l2"]})))[0])
        else:
            held = variant(name, related[best.params["similarity"], best.params["neighbours"]],
                           recent_items(train, best.params["recent_items"]))
    result.best_sources = {k: v for k, v in result.best_sources.items() if v}
    return held


def snippet(result: TuneResult) -> str:
    """The best settings as TOML sections (see `merge_into` to merge them into a spec file)."""
    lines: list[str] = []
    for section, values in sections(result).items():
        lines += ["", f"[{section}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).lstrip() + "\n"


def sections(result: TuneResult) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if result.best_model:
        out["model"] = dict(result.best_model)
    if result.best_blend is not None:
        out["recall.u2i"] = {"sources": list(result.best_blend.sources), "blend": "weighted",
                             "weights": dict(result.best_blend.weights)}
    for name, values in result.best_sources.items():
        out[f"recall.{name}"] = dict(values)
    return out


def toml_value(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def table(result: TuneResult) -> str:
    rows = [f"{'stage':<15} {'recall':>8} {'ndcg':>8} {'secs':>6}  params"]
    for t in result.trials:
        rows.append(f"{t.stage:<15} {t.recall:8.4f} {t.ndcg:8.4f} {t.seconds:6.1f}  {t.params}")
    return "\n".join(rows)


def merge_into(path: Path, result: TuneResult) -> None:
    """Merge the tuned sections into the spec file at `path`, keys replaced in the sections it
    already has, comments and layout kept (tomlkit); written atomically."""
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    for section, values in sections(result).items():
        node = document
        for part in section.split("."):
            if part not in node:
                node[part] = tomlkit.table()
            node = node[part]
        for key, value in values.items():
            node[key] = value
    write_atomic(path, tomlkit.dumps(document))
