"""Exact and approximate top-k search: against brute force, ties, exclusions, and the u2i contract."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.kernel import keys, search
from recall.kernel.search import search as search_index
from recall.kernel.state import ItemSide, Ranking, UserBatch
from recall.model import index
from recall.sources.als import candidates as als_candidates
from tests.support.project import RUN_DATE


def brute_force(queries, vectors, item_idx, k, exclude=None):
    """Top-k by (score desc, item asc), excluded pairs and missing entries as -1 / -inf."""
    scores = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    items = np.broadcast_to(item_idx, scores.shape)
    if exclude is not None:
        dense = exclude.toarray()[:, item_idx] > 0
        scores = np.where(dense, -np.inf, scores)
    order = np.lexsort((items, -scores), axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, order, 1)
    top_items = np.where(np.isfinite(top_scores), np.take_along_axis(items, order, 1), -1)
    return top_items, np.where(np.isfinite(top_scores), top_scores, -np.inf)


def integer_vectors(rng, n, dim):
    # small integers: products are exact in float32, so ties are real ties
    return rng.integers(-2, 3, (n, dim)).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_search_equals_brute_force_with_ties_and_exclusions(monkeypatch, threads):
    monkeypatch.setattr(search, "CHUNK", 37)  # several query chunks over the threads
    rng = np.random.default_rng(3)
    vectors = integer_vectors(rng, 700, 6)  # 6 dims of -2..2: many exactly equal scores
    queries = integer_vectors(rng, 150, 6)
    exclude = sp.random(150, 700, density=0.05, random_state=4, format="csr")
    exclude.data[:] = 1
    exclude.sort_indices()
    searcher = index.exact_index(vectors, np.arange(700))
    got, got_scores = search_index(searcher, queries, 40, exclude=exclude, threads=threads)
    want, want_scores = brute_force(queries, vectors, np.arange(700), 40, exclude)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("queries", [1, 5])
def test_exact_search_of_a_few_queries(queries):
    """A fold-in searches one user at a time: the same answer as brute force."""
    rng = np.random.default_rng(queries)
    vectors, q = integer_vectors(rng, 2000, 6), integer_vectors(rng, queries, 6)
    exclude = sp.random(queries, 2000, density=0.05, random_state=5, format="csr")
    exclude.data[:] = 1
    exclude.sort_indices()
    got, got_scores = search_index(index.exact_index(vectors, np.arange(2000)), q, 50, exclude=exclude)
    want, want_scores = brute_force(q, vectors, np.arange(2000), 50, exclude)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))


def test_exact_search_over_a_subset_short_rows_and_unknown_exclusions():
    rng = np.random.default_rng(5)
    all_vectors = rng.standard_normal((50, 4)).astype(np.float32)
    allowed = np.flatnonzero(rng.random(50) < 0.5)  # a blocklist removed the rest
    searcher = index.exact_index(all_vectors[allowed], allowed)
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    # excludes allowed and blocked items alike; row 2 excludes every allowed item
    exclude = sp.csr_matrix(([1] * (3 + allowed.size), ([0, 0, 1] + [2] * allowed.size,
                                                        [int(allowed[0]), 1, 49] + allowed.tolist())), shape=(3, 50))
    exclude.sort_indices()
    got, scores = search_index(searcher, queries, 100, exclude=exclude)
    assert got.shape == (3, allowed.size)  # k above the index size: the whole index
    want, _ = brute_force(queries, all_vectors[allowed], allowed, allowed.size, exclude)
    np.testing.assert_array_equal(got, want)
    assert (got[2] == -1).all() and np.isneginf(scores[2]).all()
    assert set(got[0][got[0] >= 0]) == set(allowed) - {allowed[0]}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(width=32, allow_nan=False), st.integers(-1, 2**32 - 2)),
                min_size=1, max_size=30))
def test_packed_keys_order_by_score_then_item_and_round_trip(pairs):
    scores = np.array([s for s, _ in pairs], np.float32) + np.float32(0)
    items = np.array([i for _, i in pairs], np.int64)
    packed = keys.pack(scores, items)
    back_items, back_scores = keys.unpack(packed)
    np.testing.assert_array_equal(back_items, items)
    real = items >= 0
    np.testing.assert_array_equal(back_scores[real], scores[real])
    order = np.argsort(packed, kind="stable")
    want = np.lexsort((np.where(real, items, 2**32), -scores.astype(np.float64)))
    np.testing.assert_array_equal(scores[order], scores[want])
    np.testing.assert_array_equal(items[order][real[order]], items[want][real[want]])


def clustered(rng, n, dim, clusters):
    centres = rng.standard_normal((clusters, dim)) * 2
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))).astype(np.float32) \
        * rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)


def test_approximate_search_recall_and_exact_scores():
    rng = np.random.default_rng(9)
    items, users = clustered(rng, 6000, 16, 30), clustered(rng, 400, 16, 30)
    seen = sp.random(400, 6000, density=0.002, random_state=1, format="csr")
    seen.data[:] = 1
    seen.sort_indices()
    popular = Ranking(np.arange(6000), np.zeros(6000, np.float32))
    batch = UserBatch(np.arange(400), seen, users)
    exact = index.exact_index(items, np.arange(6000))
    approx = index.approx_index(items, np.arange(6000), nlist=0, nprobe=0, seed=1, threads=1, k=50)
    assert (approx.nlist, approx.nprobe) == index.ivf_defaults(6000, 50)
    want, _ = als_candidates(ItemSide(np.ones(6000, bool), popular, {"als": exact}), batch, 50, 1)
    got, got_scores = als_candidates(ItemSide(np.ones(6000, bool), popular, {"als": approx}), batch, 50, 2)
    recall = np.mean([len(set(g) & set(w)) / 50 for g, w in zip(got, want)])
    assert recall >= 0.9
    found = got >= 0
    # the cells are scanned by inner product: scores are the true scores, rows sorted, no seen items
    true = np.einsum("bkf,bf->bk", items[np.maximum(got, 0)], users)
    np.testing.assert_allclose(got_scores[found], true[found], rtol=1e-5, atol=1e-4)
    assert (np.diff(np.where(found, got_scores, -np.inf), axis=1) <= 0).all()
    assert not np.asarray(seen[np.repeat(np.arange(400), found.sum(axis=1)), got[found]]).any()


def u2i_counts(project, date):
    table = pq.read_table(project / "data/recall/small/u2i" / f"dt={date}").to_pandas()
    return table.groupby("user_id").size(), table


def test_approximate_run_records_recall_and_keeps_the_contract(project, cli):
    date = RUN_DATE.isoformat()
    als_only = ("--set", 'recall.u2i.sources=["als"]')  # so every non-ALS row is a fallback top-up
    exact = cli(project, "run", "small", "--date", date, *als_only)
    assert exact.returncode == 0, exact.stderr
    manifest_path = project / "data/recall/small/_manifest" / f"dt={date}.json"
    assert json.loads(manifest_path.read_text())["search"]["u2i"] == "exact"
    exact_counts, _ = u2i_counts(project, date)

    approx = cli(project, "run", "small", "--date", date, "--force", *als_only, "--set", 'recall.u2i.search="auto"',
                 "--set", "recall.u2i.approx_min_items=10", "--set", "recall.u2i.approx_check_users=300",
                 "--set", "recall.u2i.nlist=40", "--set", "recall.u2i.nprobe=4")
    assert approx.returncode == 0, approx.stderr
    search = json.loads(manifest_path.read_text())["search"]
    assert search["u2i"] == "approx"
    check = search["approx"]
    assert check["users_checked"] == 300 and check["k"] == 20
    assert (check["nlist"], check["nprobe"]) == (40, 4)
    assert 0.0 < check["recall_at_k"] <= 1.0
    log = (project / "logs/small.log").read_text()
    assert f"recall@20 {check['recall_at_k']:.4f} against exact search on 300 users" in log
    # every user still gets exactly min(k, unseen) rows: what approximate search misses is topped up
    approx_counts, table = u2i_counts(project, date)
    assert approx_counts.equals(exact_counts)
    assert set(table["source"]) <= {"als", "popular"}
