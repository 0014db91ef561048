"""The compiled kernels (recall.kernel.compiled) against brute force, against the reference
implementations of tests/support/reference.py (numpy; implicit's item-kNN), and against FAISS's
probe order.

Integer-valued vectors make every product exact in float32, so ties are real ties and results
must match bit for bit whatever tile shapes BLAS is called with.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.kernel import compiled as C
from recall.kernel.keys import pack
from recall.model import index
from tests.support import reference
from tests.test_search import brute_force, integer_vectors

NO_EXCLUSIONS = (np.zeros(1, np.int64), np.zeros(0, np.int64))


def random_csr(rng, rows, cols, density):
    m = sp.random(rows, cols, density=density, random_state=int(rng.integers(1 << 30)), format="csr")
    m.data[:] = 1
    m.sort_indices()
    return m


def padded(items, scores, k):
    """brute_force returns min(k, n) columns: pad to k as the kernels do."""
    extra = k - items.shape[1]
    return (np.pad(items, ((0, 0), (0, extra)), constant_values=-1),
            np.pad(scores.astype(np.float32), ((0, 0), (0, extra)), constant_values=-np.inf))


def exact_inputs(searcher, exclude, rows):
    ex_ptr, ex_pos = C.exclusion_lists(exclude, searcher.item_idx, rows)
    return searcher.vectors, searcher.item_idx, ex_ptr, ex_pos


# --- exact -------------------------------------------------------------------------------------


@pytest.mark.parametrize("early_stop", [True, False])
@pytest.mark.parametrize("k", [1, 40, 700, 900])  # k = n, and k above the index size
def test_exact_equals_brute_force_with_ties_and_exclusions(early_stop, k):
    rng = np.random.default_rng(3)
    vectors = integer_vectors(rng, 700, 6)  # 6 dims of -2..2: many exactly equal scores
    queries = integer_vectors(rng, 150, 6)
    queries[5] = 0  # every score 0: ties all the way
    exclude = random_csr(rng, 150, 700, 0.05)
    searcher = index.exact_index(vectors, np.arange(700))
    v, idx, ex_ptr, ex_pos = exact_inputs(searcher, exclude, 150)
    bounds = C.norm_bounds(v) if early_stop else np.full(701, np.inf)
    # small tiles: several query tiles, item tiles and buffer cuts
    keys = C.exact_top_k_keys(queries, v, idx, k, ex_ptr, ex_pos, bounds, 37, 64)
    items, scores = C.unpack_keys(keys)
    want, want_scores = padded(*brute_force(queries, vectors, np.arange(700), k, exclude), k)
    np.testing.assert_array_equal(items, want)
    np.testing.assert_array_equal(scores, want_scores)


def test_exact_real_vectors_agree_across_products_and_the_early_stop():
    """numba's np.dot (SciPy's BLAS) and numpy's matmul, full scans and early stops: the same
    items but for near-ties, scores up to float32 rounding of the products."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32) * rng.uniform(0.1, 2, (3000, 1)).astype(np.float32)
    queries = rng.standard_normal((700, 16)).astype(np.float32)
    exclude = random_csr(rng, 700, 3000, 0.01)
    searcher = index.exact_index(vectors, np.arange(3000))
    v, idx, ex_ptr, ex_pos = exact_inputs(searcher, exclude, 700)
    full, full_scores = C.exact_search(queries, v, idx, 50, ex_ptr, ex_pos, np.full(3001, np.inf), product="numpy")
    exact = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    np.testing.assert_allclose(full_scores, np.take_along_axis(exact, full, 1), rtol=1e-5, atol=1e-5)
    for product in ("numba", "numpy"):
        fast, fast_scores = C.exact_search(queries, v, idx, 50, ex_ptr, ex_pos, product=product)
        np.testing.assert_allclose(fast_scores, full_scores, rtol=1e-5, atol=1e-6)
        assert (fast == full).mean() > 0.999


def test_exact_short_and_empty_rows_subset_and_unknown_exclusions():
    rng = np.random.default_rng(5)
    all_vectors = integer_vectors(rng, 50, 4)
    allowed = np.flatnonzero(rng.random(50) < 0.5)  # a blocklist removed the rest
    searcher = index.exact_index(all_vectors[allowed], allowed)
    queries = integer_vectors(rng, 3, 4)
    # excludes allowed and blocked items alike; row 2 excludes every allowed item
    exclude = sp.csr_matrix(([1] * (3 + allowed.size), ([0, 0, 1] + [2] * allowed.size,
                                                        [int(allowed[0]), 1, 49] + allowed.tolist())), shape=(3, 50))
    exclude.sort_indices()
    v, idx, ex_ptr, ex_pos = exact_inputs(searcher, exclude, 3)
    items, scores = C.exact_search(queries, v, idx, 100, ex_ptr, ex_pos)
    assert items.shape == (3, 100)
    want, want_scores = padded(*brute_force(queries, all_vectors[allowed], allowed, allowed.size, exclude), 100)
    np.testing.assert_array_equal(items, want)
    np.testing.assert_array_equal(scores, want_scores)
    assert (items[2] == -1).all() and np.isneginf(scores[2]).all()
    assert (items[0] >= 0).sum() == allowed.size - 1


def test_exact_degenerate_sizes():
    v = np.ones((4, 3), np.float32)
    idx = np.arange(4, dtype=np.int64)
    items, scores = C.exact_search(np.zeros((0, 3), np.float32), v, idx, 5, *NO_EXCLUSIONS)
    assert items.shape == (0, 5)
    items, scores = C.exact_search(np.ones((2, 3), np.float32), v, idx, 0, np.zeros(3, np.int64), NO_EXCLUSIONS[1])
    assert items.shape == (2, 0)
    items, scores = C.exact_search(np.ones((2, 3), np.float32), v[:0], idx[:0], 3, np.zeros(3, np.int64),
                                   NO_EXCLUSIONS[1])
    assert (items == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_exact_driver_threads_and_chunks_do_not_change_results(threads):
    rng = np.random.default_rng(11)
    vectors = integer_vectors(rng, 900, 8)
    queries = integer_vectors(rng, 300, 8)
    exclude = random_csr(rng, 300, 900, 0.03)
    searcher = index.exact_index(vectors, np.arange(900))
    v, idx, ex_ptr, ex_pos = exact_inputs(searcher, exclude, 300)
    one = C.exact_search(queries, v, idx, 30, ex_ptr, ex_pos, threads=1, chunk=300)
    many = C.exact_search(queries, v, idx, 30, ex_ptr, ex_pos, threads=threads, chunk=41)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one[0], padded(*brute_force(queries, vectors, np.arange(900), 30, exclude), 30)[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 12), st.integers(1, 80), st.integers(0, 2**31 - 1),
       st.floats(0.0, 0.9))
def test_exact_property_against_brute_force(n, rows, k, seed, density):
    rng = np.random.default_rng(seed)
    vectors = integer_vectors(rng, n, 3)
    queries = integer_vectors(rng, rows, 3)
    exclude = random_csr(rng, rows, n, density)
    searcher = index.exact_index(vectors, np.arange(n))
    v, idx, ex_ptr, ex_pos = exact_inputs(searcher, exclude, rows)
    keys = C.exact_top_k_keys(queries, v, idx, k, ex_ptr, ex_pos, C.norm_bounds(v), 5, 7)
    items, scores = C.unpack_keys(keys)
    want, want_scores = padded(*brute_force(queries, vectors, np.arange(n), min(k, n), exclude), k)
    np.testing.assert_array_equal(items, want)
    np.testing.assert_array_equal(scores, want_scores)


def test_negative_zero_ranks_below_zero_as_the_packed_keys_do():
    # -0.0 and 0.0 are distinct keys in recall.kernel.keys.pack: kept that way
    keys = np.array([[C._key(np.float32(-0.0).view(np.uint32), 1), C._key(np.float32(0.0).view(np.uint32), 2)]],
                    np.uint64)
    want = pack(np.array([-0.0, 0.0], np.float32), np.array([1, 2]))
    np.testing.assert_array_equal(keys[0], want)


# --- IVF ---------------------------------------------------------------------------------------


def ivf_brute_force(queries, vectors, item_idx, offsets, probes, k, exclude):
    """Brute force over the union of each query's probed cells."""
    rows = len(queries)
    items = np.full((rows, k), -1, np.int64)
    scores = np.full((rows, k), -np.inf, np.float32)
    for r in range(rows):
        cells = [c for c in probes[r] if c >= 0]
        pos = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in cells]) if cells else np.zeros(0, int)
        if pos.size == 0:
            continue
        got, got_scores = brute_force(queries[r:r + 1], vectors[pos], item_idx[pos], k,
                                      None if exclude is None else exclude[r])
        items[r, :got.shape[1]], scores[r, :got.shape[1]] = got[0], got_scores[0]
    return items, scores


@pytest.mark.parametrize("threads", [1, 2])
def test_ivf_equals_brute_force_over_probed_cells(threads):
    rng = np.random.default_rng(21)
    n, nlist = 800, 23
    vectors = integer_vectors(rng, n, 5)
    item_idx = rng.permutation(2000)[:n].astype(np.int64)  # positions -> arbitrary item numbers
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(nlist) * 0.5))  # uneven cells, some empty
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    queries = integer_vectors(rng, 120, 5)
    probes = np.stack([rng.permutation(nlist)[:6] for _ in range(120)]).astype(np.int64)
    probes[::7, 4:] = -1  # pads
    probes[3] = -1  # probes nothing
    exclude = random_csr(rng, 120, 2000, 0.02).tolil()
    for r in range(0, 120, 9):  # excluding items the query does probe
        cell = probes[r, 0]
        if cell >= 0 and sizes[cell]:
            exclude[r, item_idx[offsets[cell]]] = 1
    exclude = exclude.tocsr()
    exclude.sort_indices()
    ex_ptr, ex_pos = C.exclusion_lists(exclude, item_idx, 120)
    for k in (1, 30, 500):
        items, scores = C.ivf_search(queries, probes, offsets, vectors, item_idx, k, ex_ptr, ex_pos,
                                     threads=threads, chunk=50)
        want, want_scores = ivf_brute_force(queries, vectors, item_idx, offsets, probes, k, exclude)
        np.testing.assert_array_equal(items, want)
        np.testing.assert_array_equal(scores, want_scores)
    assert (items[3] == -1).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 50), st.integers(1, 8), st.integers(1, 10), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_ivf_property_against_brute_force(n, nlist, nprobe, k, seed):
    rng = np.random.default_rng(seed)
    vectors = integer_vectors(rng, n, 3)
    item_idx = np.arange(n, dtype=np.int64)[::-1].copy()
    cuts = np.sort(rng.integers(0, n + 1, nlist - 1))
    offsets = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    queries = integer_vectors(rng, 6, 3)
    nprobe = min(nprobe, nlist)
    probes = np.stack([rng.permutation(nlist)[:nprobe] for _ in range(6)]).astype(np.int64)
    exclude = random_csr(rng, 6, n, 0.3)
    ex_ptr, ex_pos = C.exclusion_lists(exclude, item_idx, 6)
    keys = C.ivf_top_k_keys(queries, probes, offsets, vectors, item_idx, k, ex_ptr, ex_pos,
                            C.cell_bounds(vectors, offsets), 4)
    items, scores = C.unpack_keys(keys)
    want, want_scores = ivf_brute_force(queries, vectors, item_idx, offsets, probes, k, exclude)
    np.testing.assert_array_equal(items, want)
    np.testing.assert_array_equal(scores, want_scores)


def test_nearest_cells_order_matches_faiss_and_float64_distances():
    import faiss

    rng = np.random.default_rng(4)
    centroids = rng.standard_normal((200, 9)).astype(np.float32)
    centroids[7] = centroids[3]  # a duplicate centroid: equal distances, tie by cell number
    queries = rng.standard_normal((500, 8)).astype(np.float32)
    probes = C.probe_cells(queries, centroids, 12)
    quantizer = faiss.IndexFlatL2(9)
    quantizer.add(centroids)
    unit = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), np.float32(1e-12))
    _, want = quantizer.search(np.hstack([unit, np.zeros((500, 1), np.float32)]), 12)
    assert (probes == want).all(axis=1).mean() > 0.99  # rows differ only on near-equal distances
    u = np.hstack([unit, np.zeros((500, 1))]).astype(np.float64)
    dist = ((u[:, None, :] - centroids[None].astype(np.float64)) ** 2).sum(-1)
    got_d = np.take_along_axis(dist, probes, 1)
    assert (np.diff(got_d, axis=1) >= -1e-5).all()  # nearest first
    cut = np.sort(dist, axis=1)[:, 11]
    np.testing.assert_allclose(got_d[:, -1], cut, atol=1e-5)  # the nprobe nearest, up to rounding
    both = [(3 in row) for row in probes]
    assert all((7 in row) == b or row[-1] in (3, 7) for row, b in zip(probes, both))
    assert all(list(row).index(3) < list(row).index(7) for row in probes if 3 in row and 7 in row)


# --- item_based ---------------------------------------------------------------------------------


def item_based_case(rng, n_items=60, n_neighbours=8, users=40, r=4):
    neighbours = np.stack([rng.permutation(n_items)[:n_neighbours] for _ in range(n_items)]).astype(np.int64)
    # ties, zeros and negatives, and values whose float32 sums round differently from float64 ones
    similarity = rng.choice(np.array([-0.5, 0, 0.1, 0.2, 1 / 3, 0.7, 1.0], np.float32), neighbours.shape)
    neighbours[rng.random(neighbours.shape) < 0.1] = -1
    recent = np.stack([rng.permutation(n_items)[:r] for _ in range(users)]).astype(np.int64)
    recent[rng.random(recent.shape) < 0.2] = -1
    recent[0] = -1  # no recent items at all
    seen = random_csr(rng, users, n_items, 0.1)
    allowed = rng.random(n_items) > 0.15
    return neighbours, similarity, recent, seen, allowed


@pytest.mark.parametrize("k", [1, 5, 100])  # 100: more than any user's candidates
@pytest.mark.parametrize("threads", [1, 2])
def test_item_based_equals_the_reference(k, threads):
    rng = np.random.default_rng(17)
    neighbours, similarity, recent, seen, allowed = item_based_case(rng)
    want, want_scores = reference.item_based(neighbours, similarity, recent, seen, allowed, k)
    got, got_scores = C.item_based(neighbours, similarity, recent, seen, allowed, k, threads=threads, chunk=7)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert (got[0] == -1).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 30))
def test_item_based_property(seed, k):
    rng = np.random.default_rng(seed)
    neighbours, similarity, recent, seen, allowed = item_based_case(rng, n_items=25, n_neighbours=5, users=9, r=3)
    want, want_scores = reference.item_based(neighbours, similarity, recent, seen, allowed, k)
    got, got_scores = C.item_based(neighbours, similarity, recent, seen, allowed, k)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)


# --- ease ----------------------------------------------------------------------------------------


def ease_case(rng, n_items=60, m=40, users=40, ties=False):
    """EASE weights over m of n_items items (small integers when `ties`: many equal sums), and seen
    rows of every kind: nothing seen, only unmodelled items, every modelled item."""
    items = np.sort(rng.choice(n_items, size=m, replace=False)).astype(np.int64)
    weights = (rng.integers(-2, 3, (m, m)) if ties else rng.normal(size=(m, m))).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    seen = random_csr(rng, users, n_items, 0.15).tolil()
    seen[0, :] = 0  # nothing seen: every score 0
    seen[1, :] = 0
    seen[1, np.setdiff1d(np.arange(n_items), items)[:3]] = 1  # only unmodelled items
    seen[2, items] = 1  # every modelled item: nothing left
    seen = seen.tocsr().astype(np.float32)
    seen.eliminate_zeros()
    seen.sort_indices()
    return weights, items, seen


@pytest.mark.parametrize("k", [1, 7, 100])  # 100: more than the modelled items
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_ease_equals_the_reference(k, threads, ties):
    """The compiled EASE top-k gives scipy's product's scores bit for bit, ranked with ties by item."""
    rng = np.random.default_rng(23)
    weights, items, seen = ease_case(rng, ties=ties)
    want, want_scores = reference.ease(weights, items, seen, k)
    got, got_scores = C.ease(weights, items, seen, k, threads=threads, chunk=7)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)
    np.testing.assert_array_equal(got[0, :min(k, items.size)], items[:k])  # all tied at 0: the lowest items
    assert (got[2] == -1).all()


def test_ease_threshold_guess_on_a_realistic_size():
    """m = 600 and k = 100: the threshold guessed from every 8th score is used, and where it is
    too high (the sampled scores are the highest and user 3 saw those items) every unseen item is
    collected instead: exact either way."""
    rng = np.random.default_rng(5)
    weights, items, seen = ease_case(rng, n_items=900, m=600, users=60)
    weights[:, ::8] += 10.0
    seen = seen.tolil()
    seen[3, :] = 0
    seen[3, items[::8]] = 1
    seen = seen.tocsr()
    seen.sort_indices()
    want, want_scores = reference.ease(weights, items, seen, 100)
    got, got_scores = C.ease(weights, items, seen, 100)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert (got[3] >= 0).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 30), st.booleans())
def test_ease_property(seed, k, m, ties):
    rng = np.random.default_rng(seed)
    weights, items, seen = ease_case(rng, n_items=m + 5, m=m, users=9, ties=ties)
    want, want_scores = reference.ease(weights, items, seen, k)
    got, got_scores = C.ease(weights, items, seen, k)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)


# --- recent items --------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 300), st.booleans())
def test_latest_items_equals_the_pandas_sort(seed, r, rows, float_times):
    """Repeated items, equal times (ties by item) and users without rows, in any row order."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 12, 9
    user_idx = rng.integers(0, n_users - 1, rows).astype(np.int32)  # the last user has no rows
    item_idx = rng.integers(0, n_items, rows).astype(np.int32)
    when = rng.integers(0, 6, rows) * 1_000_000
    when = when.astype(np.float64) / 7 if float_times else when.astype(np.int64)
    want = reference.recent_items(user_idx, item_idx, when, n_users, r)
    np.testing.assert_array_equal(C.latest_items(user_idx, item_idx, when, n_users, r), want)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 300), st.sampled_from([0.0, 0.5, 2.0]), st.booleans())
def test_popularity_equals_the_pandas_groupby(seed, rows, half_life, timed):
    """The same float64 scores bit for bit: the decayed terms summed in the pairs' order of first
    appearance, as pandas grouped them; repeated pairs with earlier and later times."""
    import pyarrow as pa

    from recall.model.matrix import US_PER_DAY, IdMap, Interactions
    from recall.model.popularity import popularity

    rng = np.random.default_rng(seed)
    n_users, n_items, end_us = 11, 8, 30 * US_PER_DAY
    user_idx = rng.integers(0, n_users, rows).astype(np.int32)
    item_idx = rng.integers(0, n_items, rows).astype(np.int32)
    ts = rng.integers(0, 30 * 24, rows) * (US_PER_DAY // 24) if timed else None
    inter = Interactions(IdMap(pa.array(np.arange(n_users))), IdMap(pa.array(np.arange(n_items))), user_idx,
                         item_idx, ts, np.ones(rows))
    got = popularity(inter, np.ones(n_items, bool), end_us, 0, half_life)
    score = reference.popularity_scores(user_idx, item_idx, ts, n_items, end_us, half_life)
    want = np.lexsort((np.arange(n_items), -score))
    np.testing.assert_array_equal(got.items, want)
    np.testing.assert_array_equal(got.scores, score[want].astype(np.float32))
    pairs, last = C.first_pairs(user_idx, item_idx, ts if timed else np.zeros(0, np.int64), n_users, n_items)
    if timed and half_life:
        np.testing.assert_array_equal(np.bincount(item_idx[pairs], weights=np.exp2(
            -(np.maximum(end_us - last, 0) / US_PER_DAY) / half_life), minlength=n_items), score)


# --- choosing the blend ---------------------------------------------------------------------------


def choice_case(rng, rows: int, n_items: int, n_lists: int, k: int):
    """Lists of up to k items each (pads at the end) over few items, and relevant pairs."""
    from recall.kernel.keys import dense_keys

    lists = [random_lists(rng, rows, n_items, [k])[0].items for _ in range(n_lists)]
    relevant = np.where(rng.random((rows, n_items)) < 0.3, np.arange(n_items), -1)
    return lists, dense_keys(relevant, n_items)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 40), st.integers(1, 12))
def test_fusion_table_equals_the_sorting_reference(seed, n_lists, n_items, k):
    from recall.kernel.blend import RRF_OFFSET

    rng = np.random.default_rng(seed)
    lists, keys = choice_case(rng, 9, n_items, n_lists, k)
    want = reference.fusion(lists, keys, n_items, k)
    items = np.hstack(lists)
    source = np.repeat(np.arange(n_lists), k)
    rank = np.tile(np.arange(k), n_lists)
    got = C.fusion_table(items, source, rank, n_lists, RRF_OFFSET, keys, n_items)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 40), st.integers(1, 12), st.data())
def test_blend_recall_equals_argpartitions(seed, n_lists, n_items, k, data):
    """The compiled count of the hits in each user's top k, with argpartition deciding the users
    whose count depends on which of the scores tied at the cut it takes: argpartition's counts
    exactly, with weights from the choice's grid (equal weights tie often)."""
    from recall.evaluate.choose import WEIGHTS, fusion
    from recall.kernel.state import Candidates

    rng = np.random.default_rng(seed)
    lists, keys = choice_case(rng, 40, n_items, n_lists, k)
    candidates = {f"s{i}": Candidates(i, a, np.zeros(a.shape, np.float32)) for i, a in enumerate(lists)}
    count = np.full(40, k)
    f = fusion(candidates, keys, count, n_items, k, threads=data.draw(st.sampled_from([1, 2])))
    weights = np.array(data.draw(st.lists(st.sampled_from(WEIGHTS), min_size=n_lists, max_size=n_lists)))
    want = reference.blend_hits(f.contrib, f.hit, weights, k) / f.denominator
    np.testing.assert_array_equal(f.recall(weights), want)
    rows = np.arange(0, 40, 3)
    np.testing.assert_array_equal(f.take(rows).recall(weights), want[rows])


def test_blend_recall_ties_at_the_cut_go_argpartitions_way():
    """Equal weights over few items: many users have hits and misses tied at the k-th score, where
    the count depends on the selection; they get argpartition's."""
    from recall.evaluate.choose import fusion
    from recall.kernel.state import Candidates

    rng = np.random.default_rng(3)
    lists, keys = choice_case(rng, 300, 12, 3, 4)
    f = fusion({f"s{i}": Candidates(i, a, np.zeros(a.shape, np.float32)) for i, a in enumerate(lists)},
               keys, np.full(300, 4), 12, 4)
    weights = np.array([1.0, 1.0, 0.5])
    want = reference.blend_hits(f.contrib, f.hit, weights, 4)
    counted, unsure = C.hits_at_k(f.contrib @ weights.astype(np.float32), f.hit, 4)
    assert (counted[unsure] != want[unsure]).any()  # cases only the fallback decides
    np.testing.assert_array_equal(f.recall(weights), want / f.denominator)


# --- item-kNN ------------------------------------------------------------------------------------


def counts_case(rng, users=300, items=80):
    counts = sp.random(users, items, density=0.06, random_state=int(rng.integers(1 << 30)), format="csr",
                       data_rvs=lambda size: rng.integers(1, 4, size).astype(np.float32))
    counts = counts.tolil()
    counts[np.arange(10), np.arange(10)] = 0
    counts[5, :] = 1.0  # a user who saw everything (BM25's idf turns non-positive)
    counts = counts.tocsr().astype(np.float32)
    counts.eliminate_zeros()
    counts.sort_indices()
    return counts


@pytest.mark.parametrize("kind", ["bm25", "cosine"])
@pytest.mark.parametrize("n", [1, 6, 100])  # 100: more than the catalogue
@pytest.mark.parametrize("threads", [1, 2])
def test_item_knn_equals_implicit(kind, n, threads):
    rng = np.random.default_rng(2)
    counts = counts_case(rng)
    allowed = rng.random(80) > 0.2
    want, want_scores = reference.implicit_neighbours(counts, kind, n, allowed)
    got, got_scores = C.item_knn(counts, kind, n, allowed, threads=threads, chunk=9)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)


@pytest.mark.parametrize("kind", ["bm25", "cosine"])
def test_item_knn_ties_at_the_cut_go_implicits_way(kind):
    """Item 0 co-occurs once with each of items 1..30, every one of them alike: thirty equal
    similarities for 5 places. implicit keeps the ones its heap meets first in its visiting
    order (the reverse of first touch), not the lowest item numbers."""
    rows, cols = [], []
    for j in range(1, 31):
        rows += [j, j, 30 + j]
        cols += [0, j, j]
    counts = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(61, 31))
    allowed = np.ones(31, bool)
    want, want_scores = reference.implicit_neighbours(counts, kind, 5, allowed)
    got, got_scores = C.item_knn(counts, kind, 5, allowed)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)
    assert len(set(want_scores[0])) == 1 and list(want[0]) != [1, 2, 3, 4, 5]  # the case is a tie at the cut
    canonical, _ = C.item_knn(counts, kind, 5, allowed, like_implicit=False)
    assert list(canonical[0]) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kind", ["bm25", "cosine"])
def test_item_knn_canonical_is_the_restricted_top_n(kind):
    """like_implicit=False: the n best allowed others by (float32 similarity desc, item asc), i.e.
    implicit's answer when its K covers every item (nothing cut before the restriction)."""
    rng = np.random.default_rng(8)
    counts = counts_case(rng)
    allowed = rng.random(80) > 0.3
    full, full_scores = reference.implicit_neighbours(counts, kind, 80, allowed)
    got, got_scores = C.item_knn(counts, kind, 7, allowed, like_implicit=False)
    np.testing.assert_array_equal(got, full[:, :7])
    np.testing.assert_array_equal(got_scores, full_scores[:, :7])


def test_item_knn_cap_keeps_each_users_top_entries():
    rng = np.random.default_rng(6)
    counts = counts_case(rng)
    allowed = np.ones(80, bool)
    deg = np.diff(counts.indptr)
    same = C.item_knn(counts, "bm25", 10, allowed, max_user_items=int(deg.max()))
    full = C.item_knn(counts, "bm25", 10, allowed)
    np.testing.assert_array_equal(same[0], full[0])  # a cap nobody reaches changes nothing
    capped = C.item_knn(counts, "bm25", 10, allowed, max_user_items=3)
    # the same as weighting in full, then keeping each user's 3 highest weights (lower item on ties)
    w = C.cooccurrence_weights(counts, "bm25").tolil()
    for u in range(w.shape[0]):
        row = np.array(w.rows[u]), np.array(w.data[u])
        if row[0].size > 3:
            drop = row[0][np.lexsort((row[0], -row[1]))[3:]]
            for j in drop:
                w[u, j] = 0
    w = w.tocsr()
    w.eliminate_zeros()
    items_t = w.T.tocsr()
    want = C.cooccurrence_top_n(items_t.indptr.astype(np.int64), items_t.indices.astype(np.int64), items_t.data,
                                w.indptr.astype(np.int64), w.indices.astype(np.int64), w.data, allowed, 10, 0, 80,
                                True)
    np.testing.assert_array_equal(capped[0], want[0])
    np.testing.assert_array_equal(capped[1], want[1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=12), min_size=1, max_size=8), st.integers(1, 5))
def test_cap_rows_property(rows, cap):
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate([np.arange(len(r)) for r in rows] + [np.zeros(0)]).astype(np.int32)
    prio = np.concatenate([np.array(r, float) for r in rows] + [np.zeros(0)])
    data = prio * 10
    ptr, idx, out = C.cap_rows(indptr, indices, data, prio, cap)
    for r, row in enumerate(rows):
        keep = sorted(np.lexsort((np.arange(len(row)), -np.array(row, float)))[:cap]) if row else []
        np.testing.assert_array_equal(idx[ptr[r]:ptr[r + 1]], keep)
        np.testing.assert_array_equal(out[ptr[r]:ptr[r + 1]], np.array(row, float)[keep] * 10)


# --- selection helpers ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=300), st.data())
def test_select_and_sort_with_repeated_keys(values, data):
    keys = np.array(values, np.uint64)
    k = data.draw(st.integers(1, len(values)))
    buf = keys.copy()
    C._select(buf, len(buf), k)
    np.testing.assert_array_equal(np.sort(buf[:k]), np.sort(keys)[:k])
    tmp = np.empty_like(buf)
    C._sort(buf, k, tmp)
    np.testing.assert_array_equal(buf[:k], np.sort(keys)[:k])


# --- numba's cache ---------------------------------------------------------------------------------


def test_no_writable_cache_folder_compiles_in_memory(tmp_path):
    """numba refuses cache=True where it can write no cache folder: the module then compiles in
    memory, with one warning, instead of failing at import. Simulated without permissions (the
    tests may run as root): __pycache__ is a file, and the other cache folders lie under one."""
    import shutil
    import subprocess
    import sys

    pkg = tmp_path / "recall"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(C.__file__, pkg / "compiled.py")
    (pkg / "__pycache__").write_text("not a folder")
    blocked = tmp_path / "file"
    blocked.write_text("")
    code = ("import numpy as np, warnings\n"
            "warnings.simplefilter('always')\n"
            "from recall import compiled as C\n"
            "p, pos = C.excluded_positions(np.array([0, 2]), np.array([1, 0]), np.array([1, 0]))\n"
            "print(pos.tolist())\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": str(blocked / "numba"),
           "XDG_CACHE_HOME": str(blocked / "xdg"), "HOME": str(blocked / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1]"
    assert out.stderr.count("no writable numba cache folder") == 1


def random_lists(rng: np.random.Generator, rows: int, n_items: int, widths: list[int]) -> list:
    """Per-source lists: unique items per row, best first, a random share of short rows (pads last)."""
    from recall.kernel.state import Candidates

    lists = []
    for code, width in enumerate(widths):
        items = np.full((rows, width), -1, np.int64)
        for r in range(rows):
            n = int(rng.integers(0, min(width, n_items) + 1))
            items[r, :n] = rng.choice(n_items, size=n, replace=False)
        lists.append(Candidates(code, items, rng.random((rows, width)).astype(np.float32)))
    return lists


@given(st.integers(0, 2**31 - 1), st.integers(1, 25), st.integers(1, 4), st.integers(1, 60),
       st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]))
@settings(max_examples=60, deadline=None)
def test_fuse_compiled_equals_the_sorting_reference(seed, k, n_lists, n_items, w0):
    """The compiled weighted blend gives the sorted reference's items, float32 scores and lead source
    exactly: a few items over several lists make many equal contributions and ties."""
    from recall.kernel.blend import fuse

    rng = np.random.default_rng(seed)
    lists = random_lists(rng, 7, n_items, [int(rng.integers(1, 30)) for _ in range(n_lists)])
    weights = [w0] + [float(rng.choice([0.1, 0.25, 0.5, 1.0])) for _ in range(n_lists - 1)]
    want = fuse(lists, weights, k)
    for threads in (1, 2):
        got = fuse(lists, weights, k, n_items, threads)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.source, want.source)


def test_fuse_compiled_refuses_a_list_that_repeats_an_item():
    from recall.kernel.blend import fuse
    from recall.kernel.state import Candidates

    twice = Candidates(0, np.array([[3, 3]], np.int64), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="repeats an item"):
        fuse([twice], [1.0], 2, 5)
