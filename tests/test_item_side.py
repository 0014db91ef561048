"""The published item side: sealed with its names, listed in the manifest, loaded back to the same
kernel answers; and fold-in against implicit's own recalculate_user."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from conftest import RUN_DATE
from recall.engines.local import LocalEngine, published_side
from recall.ingest.window import Window
from recall.jobs import find_job
from recall.model.matrix import confidence as trained_confidence
from recall.kernel.foldin import FoldIn, confidence, fold_batch, summed, user_vector
from recall.sources import spec_blend
from recall.sources.recommend import recommend
from recall.store import commit, item_side
from recall.store.commit import Publication
from recall.store.layout import ITEM_SIDE, JobDir
from recall.store.state import is_published, read_manifest
from recall.timer import Timer

DATE = RUN_DATE.isoformat()


def test_seal_keeps_names_only_when_asked(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), staged / "items.parquet")
    (staged / "settings.json").write_text("{}")
    (staged / "_SUCCESS").write_text("")  # another writer's marker: dropped
    marker = commit.seal(staged, tmp_path / "final", "r1", keep_names=True)
    assert marker.files == {"items.parquet": 3, "settings.json": 0} and marker.rows == 3
    assert sorted(p.name for p in staged.iterdir()) == ["_SUCCESS", "items.parquet", "settings.json"]
    assert json.loads((staged / "_SUCCESS").read_text())["files"] == marker.files
    renumbered = commit.seal(staged, tmp_path / "final", "r2")  # the default: part-NNNNN, Parquet only
    assert renumbered.files == {"part-00000.parquet": 3}


def fitted(project, extra: list[str]):
    spec = find_job("small", project, extra)
    engine = LocalEngine(spec, project, threads=1)
    data = engine.prepare(Window(RUN_DATE, spec.job.lookback_days, spec.job.timezone), Timer())
    how = spec_blend(spec)
    return spec, how, engine.fit(data, how, Timer())


@pytest.mark.parametrize("extra", [
    [],  # exact search; als, item_based (bm25 item-kNN), recent_popular; log weighting
    ["recall.u2i.search=approx", "recall.u2i.nlist=12", "recall.u2i.nprobe=3", "model.weighting=bm25",
     "recall.item_based.similarity=als", 'recall.u2i.sources=["als", "item_based", "popular"]',
     'recall.u2i.blend="quota"', "recall.u2i.quotas={als = 0.5, item_based = 0.3}"],
], ids=["exact", "ivf-bm25-quota"])
def test_published_item_side_gives_the_same_lists(project, tmp_path, extra):
    spec, how, model = fitted(project, extra)
    publication = Publication(JobDir(tmp_path / "out" / "small"), "run-1", DATE)
    item_side.write(publication.folder(ITEM_SIDE), published_side(model, how, spec, publication), "small")
    publication.seal(ITEM_SIDE)
    loaded = item_side.load(publication.folder(ITEM_SIDE))
    assert loaded.run_id == "run-1" and loaded.blend == how and loaded.k == spec.recall.u2i.k
    assert loaded.item_ids.equals(model.items_map.values)
    if "recall.u2i.search=approx" in extra:
        assert loaded.side.parts["als"].approx and loaded.side.parts["als"].nprobe == 3
    batch = model.users.batch(np.arange(model.users.n_users))
    want, got = recommend(model.side, batch, how, spec.recall.u2i.k), recommend(loaded.side, batch, loaded.blend, loaded.k)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.source, want.source)
    # any reader opens it: plain Parquet, the same factors
    items = pq.read_table(publication.folder(ITEM_SIDE) / "items.parquet")
    factors = np.stack(items["factors"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(factors, model.side.factors)


def test_a_run_publishes_its_item_side_in_the_manifest(project, cli):
    result = cli(project, "run", "small", "--date", DATE)
    assert result.returncode == 0, result.stderr
    job = JobDir(project / "data" / "recall" / "small")
    manifest = read_manifest(job, DATE)
    assert ITEM_SIDE in manifest.tables and is_published(job, DATE)
    loaded = item_side.load(job.partition(ITEM_SIDE, DATE))
    assert loaded.run_id == manifest.run_id and loaded.settings["job"] == "small"
    assert "item_side" in result.stdout  # the run's summary counts it with the tables
    # a reader that finds a settings.json of another run refuses it rather than mixing runs
    settings = job.partition(ITEM_SIDE, DATE) / "settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "run_id": "other"}))
    with pytest.raises(ValueError, match="run other"):
        item_side.load(job.partition(ITEM_SIDE, DATE))


@pytest.mark.parametrize("weighting", ["log", "bm25", "none"])
def test_fold_in_equals_implicit_recalculate_user(project, weighting):
    spec, how, model = fitted(project, [f"model.weighting={weighting}"])
    publication = Publication(JobDir(project / "x"), "r", DATE)
    published = published_side(model, how, spec, publication)
    fold = FoldIn.of(published.side.factors, published.fold, published.weight_sum)
    peer = AlternatingLeastSquares(factors=spec.model.factors, regularization=spec.model.regularization,
                                   alpha=spec.model.alpha, random_state=0)
    peer.item_factors = published.side.factors
    peer.user_factors = np.zeros((1, spec.model.factors), np.float32)
    rng = np.random.default_rng(3)
    counts = model.context.counts
    for user in rng.choice(model.users.n_users, 20, replace=False):
        row = counts[user]
        items, r = summed(row.indices, row.data)
        r = confidence(fold, items, r)
        ours = user_vector(fold, items, r)
        with threadpool_limits(1, "blas"):
            theirs = peer.recalculate_user(0, sp.csr_matrix((r, (np.zeros(items.size, int), items)),
                                                            shape=(1, fold.n_items)))
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-5)
    # the weighting is the training's: a window user's r equals their row of the trained matrix
    r_all = trained_confidence(counts, spec.model)
    for user in (0, 5, 17):
        row = counts[user]
        np.testing.assert_allclose(confidence(fold, *summed(row.indices, row.data)), r_all[user].data, rtol=1e-5)
    # a folded-in window user gets the kernel's list for that vector, with their items as seen
    batch = fold_batch(fold, [(np.array([3, 7, 3, 11]), None)], recent=5, n_items=fold.n_items)
    assert batch.seen.indices.tolist() == [3, 7, 11] and batch.recent[0].tolist() == [3, 7, 11, -1, -1]
    merged = recommend(published.side, batch, how, 10)
    assert not set(merged.items[0].tolist()) & {3, 7, 11}

