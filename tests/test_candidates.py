"""Candidate generation: a known-answer test, the contract as a Hypothesis property, and the pieces."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recall.engines.local import Model, fit_model
from recall.ingest.prepare import encode
from recall.ingest.validate import CleanLog
from recall.kernel.blend import Blend, blend, top_up
from recall.kernel.state import Candidates, ItemSide, Merged, Ranking, UserBatch
from recall.model.index import exact_index
from recall.model.matrix import US_PER_DAY
from recall.sources import CODE, spec_blend
from recall.sources.als import candidates as als_candidates
from recall.sources.recommend import recommend
from recall.spec.sections import JobSpec

END = 100 * US_PER_DAY


def spec_for(k: int, sources=("als",), blend="ordered", factors=4, iterations=20, **u2i) -> JobSpec:
    spec = JobSpec()
    spec.model.factors, spec.model.iterations, spec.model.threads = factors, iterations, 1
    spec.model.weighting, spec.model.regularization = "none", 0.01
    spec.recall.u2i.k, spec.recall.u2i.sources, spec.recall.u2i.blend = k, list(sources), blend
    for key, value in u2i.items():
        setattr(spec.recall.u2i, key, value)
    spec.recall.i2i.k = 5
    return spec


def fit(inter, spec: JobSpec, end: int, blocked: np.ndarray) -> Model:
    return fit_model(inter, spec, end, blocked, tuple(spec.recall.u2i.sources), threads=1)


def recommend_all(model: Model, spec: JobSpec) -> Merged:
    users = np.arange(model.users.n_users)
    return recommend(model.side, model.users.batch(users), spec_blend(spec), spec.recall.u2i.k)


def checkerboard(groups: int = 2, users_per_group: int = 20, items_per_group: int = 10):
    """Each user saw every item of its group but one: that one is its best unseen item."""
    users, items, left_out = [], [], {}
    for g in range(groups):
        for j in range(users_per_group):
            u = g * users_per_group + j
            skip = g * items_per_group + j % items_per_group
            left_out[u] = skip
            for i in range(g * items_per_group, (g + 1) * items_per_group):
                if i != skip:
                    users.append(u)
                    items.append(i)
    n = len(users)
    log = CleanLog(pa.array(users, pa.int64()), pa.array(items, pa.int64()),
                   np.full(n, END - US_PER_DAY, np.int64), np.ones(n))
    return encode(log), left_out


def test_known_answer_checkerboard_best_unseen_item_is_the_left_out_one():
    inter, left_out = checkerboard()
    spec = spec_for(k=3)
    model = fit(inter, spec, END, np.zeros(len(inter.items), bool))
    merged = recommend_all(model, spec)
    assert merged.items[:, 0].tolist() == [left_out[u] for u in range(len(inter.users))]
    assert (merged.source[:, 0] == CODE["als"]).all()
    # the other slots come from the other group (everything else in-group is seen)
    seen = model.users.seen.toarray().astype(bool)
    assert not seen[np.arange(len(inter.users))[:, None], merged.items].any()


def test_known_answer_blocklisted_best_item_is_skipped():
    inter, left_out = checkerboard()
    blocked = np.zeros(len(inter.items), bool)
    blocked[left_out[0]] = True  # user 0's best unseen item
    spec = spec_for(k=3)
    merged = recommend_all(fit(inter, spec, END, blocked), spec)
    assert not np.isin(merged.items, np.flatnonzero(blocked)).any()
    assert merged.lengths().tolist() == [3] * len(inter.users)


def test_i2i_neighbours_stay_in_group_and_exclude_the_item():
    inter, _ = checkerboard()
    model = fit(inter, spec_for(k=3, factors=2), END, np.zeros(len(inter.items), bool))
    items, scores = model.i2i.items, model.i2i.scores
    group = np.arange(len(inter.items)) // 10
    assert (items != np.arange(len(inter.items))[:, None]).all()
    assert (group[items] == group[:, None]).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_nearest_unseen_fetches_enough_for_heavy_users():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    user = rng.normal(size=(1, 8)).astype(np.float32)
    order = np.argsort(-(vectors @ user[0]))
    seen = sp.csr_matrix((np.ones(40), (np.zeros(40, int), np.sort(order[:40]))), shape=(1, 50))
    side = ItemSide(np.ones(50, bool), Ranking(np.arange(50), np.zeros(50, np.float32)),
                    {"als": exact_index(vectors, np.arange(50))})
    items, scores = als_candidates(side, UserBatch(np.array([0]), seen, user), 5, 1)
    assert items[0].tolist() == order[40:45].tolist()  # the five best after the 40 seen ones


def test_blend_modes():
    a = Candidates(0, np.array([[1, 2, 3, -1]]), np.array([[9, 8, 7, -np.inf]], np.float32))
    b = Candidates(2, np.array([[3, 4, 5, 6]]), np.array([[5, 4, 3, 2]], np.float32))
    names = ["als", "recent_popular"]
    ordered = blend([a, b], names, 5, Blend("ordered", tuple(names)))
    assert ordered.items.tolist() == [[1, 2, 3, 4, 5]]
    assert ordered.source.tolist() == [[0, 0, 0, 2, 2]]
    quota = blend([a, b], names, 4, Blend("quota", tuple(names), quotas={"als": 0.5, "recent_popular": 0.5}))
    # two slots each; 3 already came from als, so recent_popular's slots go to 4 and 5
    assert quota.items.tolist() == [[1, 2, 4, 5]] and quota.source.tolist() == [[0, 0, 2, 2]]
    fused = blend([a, b], names, 3, Blend("weighted", tuple(names), weights={"als": 1.0, "recent_popular": 1.0}))
    # 3: 1/63 + 1/61 (both sources); then 1 (1/61); then 2 and 4 tie at 1/62, the lower id first
    assert fused.items.tolist() == [[3, 1, 2]]
    assert fused.source.tolist() == [[2, 0, 0]]  # 3 counts most for recent_popular (rank 1 there)


def test_top_up_fills_from_the_fallback_skipping_seen_and_taken():
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.int8))
    batch = UserBatch(np.array([0, 1]), seen)
    merged = Merged(np.array([[2, -1, -1], [-1, -1, -1]]), np.array([[1.0, -np.inf, -np.inf]] * 2, np.float32),
                    np.array([[0, -1, -1], [-1, -1, -1]], np.int8))
    ranking = Ranking(np.array([0, 2, 1, 3, 4, 5]), np.arange(6, 0, -1).astype(np.float32))
    out = top_up(merged, ranking, 1, batch, np.minimum(3, 6 - np.array([1, 0])), 3)
    assert out.items.tolist() == [[2, 1, 3], [0, 2, 1]]
    assert out.source.tolist() == [[0, 1, 1], [1, 1, 1]]


# --- the contract, as a property ------------------------------------------------------

SOURCE_SETS = st.lists(st.sampled_from(["als", "popular", "recent_popular", "item_based", "ease"]),
                       min_size=1, max_size=5, unique=True)


@st.composite
def scenarios(draw):
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(2, 25))
    pairs = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1),
                                    st.integers(0, 20)), min_size=2, max_size=120))
    blocked = draw(st.lists(st.integers(0, n_items - 1), max_size=n_items // 2, unique=True))
    k = draw(st.integers(1, 30))
    sources = draw(SOURCE_SETS)
    blend = draw(st.sampled_from(["ordered", "quota", "weighted"]))
    quotas = {s: draw(st.floats(0, 1)) for s in sources}
    return n_items, pairs, blocked, k, sources, blend, quotas


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_candidate_contract_holds_for_any_log(scenario):
    n_items, pairs, blocked_ids, k, sources, blend, quotas = scenario
    users = np.array([p[0] for p in pairs])
    items = np.array([p[1] for p in pairs])
    ts = END - np.array([p[2] for p in pairs]) * US_PER_DAY // 4
    inter = encode(CleanLog(pa.array(users, pa.int64()), pa.array(items, pa.int64()), ts.astype(np.int64),
                            np.ones(len(pairs))))
    item_ids = np.array(inter.items.values.to_pylist())
    blocked = np.isin(item_ids, blocked_ids)
    if blocked.all():
        return
    spec = spec_for(k, sources, blend, factors=3, iterations=2, quotas=quotas)
    model = fit(inter, spec, END, blocked)
    all_users = np.arange(len(inter.users))
    merged = recommend_all(model, spec)
    seen = model.users.seen.toarray().astype(bool)
    allowed_unseen = (~seen & ~blocked[None, :]).sum(axis=1)
    for u in all_users:
        row = merged.items[u]
        valid = row >= 0
        n = valid.sum()
        assert n == min(k, allowed_unseen[u])  # exactly min(k, unseen allowed), never padded inside
        assert valid[:n].all() and not valid[n:].any()  # ranks 1..n without gaps
        got = row[:n]
        assert len(set(got.tolist())) == n  # no duplicates
        assert not seen[u, got].any()  # nothing seen
        assert not blocked[got].any()  # nothing blocklisted
        assert np.isfinite(merged.scores[u, :n]).all()
        assert (merged.source[u, :n] >= 0).all()
