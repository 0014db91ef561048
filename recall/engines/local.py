"""The local engine: the whole window in memory on one machine, numpy/BLAS, implicit and FAISS.

Training builds the item side (every source's part) and the user side; the tables are then
written batch by batch with the shared candidate kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from tqdm import tqdm

from recall.engines.base import Engine
from recall.evaluate.backtest import Returning, returning_pairs
from recall.evaluate.holdout import HoldoutSet
from recall.evaluate.metrics import sample_users
from recall.evaluate.split import blocked_of, holdout_split
from recall.ingest.prepare import InputStats, Prepared, prepare
from recall.ingest.window import Window
from recall.kernel.blend import Blend
from recall.kernel.foldin import FoldSettings
from recall.kernel.state import ItemSide, Neighbours, UserSide
from recall.model.als import train_als
from recall.model.itemknn import cosine_neighbours
from recall.model.matrix import IdMap, Interactions, confidence, decayed, seen_matrix, to_csr
from recall.model.popularity import popularity, recent_items
from recall.sources import NAMES, SOURCES, FitContext
from recall.sources.recommend import contract_violation, merge, source_lists
from recall.spec.sections import JobSpec
from recall.store import item_side
from recall.store.commit import Publication
from recall.store.item_side import PublishedSide
from recall.store.layout import ITEM_SIDE
from recall.store.tables import TableWriter, i2i_rows, i2i_schema, popular_rows, popular_schema, u2i_rows, u2i_schema
from recall.timer import Timer


@dataclass(frozen=True)
class Model:
    """What the local engine fitted on one window."""

    users_map: IdMap
    items_map: IdMap
    side: ItemSide
    users: UserSide
    i2i: Neighbours | None  # the i2i table's neighbours
    search: dict  # facts for the manifest: the als source's search mode and its recall check
    context: FitContext  # what the parts were built from (tuning rebuilds parts with other options)
    weight_sum: np.ndarray  # float32 per item: summed weights the confidence saw (bm25's item statistic)


def fit_model(inter: Interactions, spec: JobSpec, end_us: int, blocked: np.ndarray, sources: tuple[str, ...],
              threads: int, timer: Timer | None = None, with_i2i: bool = True, progress: bool | str = False) -> Model:
    """Train what `sources` (and the i2i table) need and build their parts of the item side;
    `progress`: show ALS's progress bar (labelled with it when it is a text)."""
    timer = timer or Timer()
    counts = to_csr(inter)
    seen = seen_matrix(counts)
    allowed = ~blocked
    i2i_k = spec.recall.i2i.k if with_i2i else 0
    with timer.step("popular"):
        popular = popularity(inter, allowed, end_us, spec.recall.popular.days, 0.0)
    factors = None
    weights = decayed(inter.weight, inter.ts, end_us, spec.model.half_life_days)
    weighted = counts if weights is inter.weight else to_csr(inter, weights)
    if i2i_k or any(SOURCES[name].needs_factors(spec) for name in sources):
        with timer.step("als_fit"):
            factors = train_als(confidence(weighted, spec.model), spec.model, threads, show_progress=progress)
    ctx = FitContext(inter, counts, seen, allowed, end_us, spec, threads, factors)
    parts, search = {}, {}
    for name in sources:
        if SOURCES[name].build is not None:
            with timer.step(SOURCES[name].label):
                parts[name], facts = SOURCES[name].build(ctx)
            search.update({"u2i": facts.pop("mode"), **facts} if name == "als" else facts)
    depth = max((SOURCES[name].recent_depth(spec) for name in sources), default=0)
    recent = recent_items(inter, depth) if depth else None
    i2i = None
    if i2i_k:
        with timer.step("i2i_search"):
            i2i = cosine_neighbours(factors.items, allowed, i2i_k, threads)
    side = ItemSide(allowed, popular, parts, None if factors is None else factors.items)
    users = UserSide(seen, None if factors is None else factors.users, recent)
    return Model(inter.users, inter.items, side, users, i2i, search, ctx, item_weight_sums(weighted))


def fit_holdout(data: Prepared, spec: JobSpec, sources: tuple[str, ...], threads: int,
                timer: Timer | None = None, progress: bool = False) -> tuple[HoldoutSet, Model] | None:
    """Split the window, fit `sources` on the training part; the set to score and the model."""
    split = holdout_split(data.inter, spec.evaluate, data.window.bounds_us()[1], spec.model.random_state)
    if split is None:
        return None
    model = fit_model(split.train, spec, split.cutoff_us, blocked_of(data.inter, split.train, data.blocked),
                      sources, threads, timer, with_i2i=False, progress="holdout: ALS" if progress else False)
    evaluated = sample_users(split.relevant, spec.evaluate.max_users, spec.model.random_state)
    held = HoldoutSet(model.side, model.users, evaluated, split.relevant, split.description,
                      len(split.train.user_idx), spec.evaluate.k, threads, spec.recall.u2i.batch_size)
    return held, model


class LocalEngine(Engine):
    name = "local"
    can_search = True

    def prepare(self, window: Window, timer: Timer) -> Prepared:
        return prepare(self.spec, window, self.root, timer)

    def input_stats(self, data: Prepared) -> InputStats:
        return data.stats

    def end_us(self, data: Prepared) -> int:
        return data.window.bounds_us()[1]

    def holdout(self, data: Prepared, timer: Timer, sources: tuple[str, ...], spec: JobSpec | None = None
                ) -> HoldoutSet | None:
        fitted = fit_holdout(data, spec or self.spec, sources, self.threads, timer, progress=self.progress)
        return fitted[0] if fitted else None

    def returning(self, data: Prepared, since_us: int) -> Returning | str:
        return returning_pairs(data.inter, since_us, self.spec.evaluate.max_users, self.spec.model.random_state)

    def fit(self, data: Prepared, how: Blend, timer: Timer) -> Model:
        return fit_model(data.inter, self.spec, self.end_us(data), data.blocked, how.sources, self.threads, timer,
                         progress="ALS" if self.progress else False)

    def write_tables(self, model: Model, how: Blend, publication: Publication, timer: Timer) -> dict:
        with timer.step("u2i"):
            write_u2i(model, how, self.spec, publication, self.threads, timer, self.progress)
        if model.i2i is not None:
            with timer.step("i2i"):
                write_i2i(model, self.spec, publication)
        with timer.step("popular"):
            write_popular(model, self.spec, publication)
        with timer.step("item_side"):
            item_side.write(publication.folder(ITEM_SIDE), published_side(model, how, self.spec, publication),
                            self.spec.name, self.spec.output.compression)
        return model.search


def published_side(model: Model, how: Blend, spec: JobSpec, publication: Publication) -> PublishedSide:
    """What the run publishes of its model for serving and fold-in (recall.store.item_side)."""
    return side_to_publish(model.items_map.values, model.side, how, spec, model.weight_sum, publication)


def side_to_publish(item_ids: pa.Array, side: ItemSide, how: Blend, spec: JobSpec, weight_sum: np.ndarray,
                    publication: Publication) -> PublishedSide:
    """An item side as every engine publishes it: with the settings fold-in needs."""
    m = spec.model
    fold = None if side.factors is None else FoldSettings(
        side.factors.shape[1], m.regularization, m.alpha, m.weighting, m.bm25_k1, m.bm25_b)
    depth = max((SOURCES[name].recent_depth(spec) for name in how.sources), default=0)
    return PublishedSide(item_ids, side, how, spec.recall.u2i.k, depth, fold, weight_sum, publication.run_id,
                         publication.date)


def item_weight_sums(weighted: sp.csr_matrix) -> np.ndarray:
    """Per item, the summed weight over users, as implicit's bm25_weight sums an item's row."""
    return np.ravel(weighted.T.tocoo().sum(axis=1)).astype(np.float32)


def table_writer(spec: JobSpec, publication: Publication, table: str, schema: pa.Schema) -> TableWriter:
    o = spec.output
    return TableWriter(publication.folder(table), schema, o.max_rows_per_file, o.row_group_rows, o.compression)


def write_u2i(model: Model, how: Blend, spec: JobSpec, publication: Publication, threads: int, timer: Timer,
              progress: bool = False) -> int:
    """Every user's list, batch by batch, each batch checked against the u2i contract first; the
    time of each source's search, the blend, the check and the writing add up in `timer`."""
    ids, item_ids = model.users_map.values, model.items_map.values
    writer = table_writer(spec, publication, "u2i", u2i_schema(ids.type, item_ids.type))
    k, size = spec.recall.u2i.k, spec.recall.u2i.batch_size
    starts = range(0, model.users.n_users, size)
    if progress:
        starts = tqdm(starts, desc="u2i", unit="batch", leave=False)
    names = pa.array(NAMES, pa.string())
    for start in starts:
        users = np.arange(start, min(start + size, model.users.n_users), dtype=np.int64)
        batch = model.users.batch(users)
        lists = []
        for name in how.sources:  # recommend(), one source at a time, to time each
            with timer.step(name, quiet=True):
                lists += source_lists(model.side, batch, (name,), k, threads)
        with timer.step("blend", quiet=True):
            merged = merge(model.side, batch, lists, how, k, threads)
        with timer.step("check", quiet=True):
            broken = contract_violation(model.side, batch, merged, k)
        if broken:
            raise RuntimeError(f"u2i contract broken: {broken}")
        with timer.step("write", quiet=True):
            writer.write(u2i_rows(users, merged, ids, item_ids, names))
    with timer.step("write", quiet=True):
        return writer.close()


def write_popular(model: Model, spec: JobSpec, publication: Publication) -> int:
    writer = table_writer(spec, publication, "popular", popular_schema(model.items_map.values.type))
    writer.write(popular_rows(model.side.popular, spec.recall.popular.k, model.items_map.values))
    return writer.close()


def write_i2i(model: Model, spec: JobSpec, publication: Publication) -> int:
    item_ids = model.items_map.values
    writer = table_writer(spec, publication, "i2i", i2i_schema(item_ids.type))
    k, size = spec.recall.i2i.k, spec.recall.i2i.batch_size
    for start in range(0, len(item_ids), size):
        items = np.arange(start, min(start + size, len(item_ids)), dtype=np.int64)
        writer.write(i2i_rows(items, model.i2i.items[items, :k], model.i2i.scores[items, :k], item_ids))
    return writer.close()
