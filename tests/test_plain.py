"""The plain kernels (recall.kernel.plain, NumPy) against the compiled ones (numba) for a batch of
one user: the same items, the same score bits, the same source codes.

Vectors here are real-valued, unlike tests/test_compiled.py's small integers: a product is then
rounded, and only the same BLAS call over the same memory gives the same bits. Hypothesis varies
sizes across tile and cell edges (a tile or a cell of one item goes to sdot instead of sgemv)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.kernel import compiled as C
from recall.kernel import plain as P
from recall.kernel.backend import kernels, plain_kernels
from recall.kernel.state import Candidates
from recall.sources.recommend import recommend
from tests.test_compiled import random_csr
from tests.test_item_side import fitted


def same(got, want) -> None:
    """Equal arrays, floats compared bit for bit."""
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.dtype.kind == "f":
            g, w = g.view(np.uint32 if g.itemsize == 4 else np.uint64), w.view(np.uint32 if w.itemsize == 4 else np.uint64)
        np.testing.assert_array_equal(g, w)


def one_user_inputs(rng, n: int, f: int, density: float):
    vectors = rng.standard_normal((n, f)).astype(np.float32)
    query = rng.standard_normal((1, f)).astype(np.float32)
    item_idx = rng.permutation(n + 5)[:n].astype(np.int64)
    exclude = random_csr(rng, 1, n + 5, density)
    return vectors, query, item_idx, exclude


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 300), st.integers(1, 70), st.sampled_from([1, 32, 64]),
       st.floats(0, 0.5))
def test_exact_search(seed, n, k, tile, density):
    rng = np.random.default_rng(seed)
    vectors, query, item_idx, exclude = one_user_inputs(rng, n, 9, density)
    if n > 3:
        vectors[1] = vectors[2]  # a tie, broken by item
    ex = C.exclusion_lists(exclude, item_idx, 1)
    same(P.exclusion_lists(exclude, item_idx, 1), ex)
    want = C.exact_search(query, vectors, item_idx, k, *ex, tile_items=tile)
    same(P.exact_search(query, vectors, item_idx, k, *ex, tile_items=tile), want)


def test_exact_search_at_the_default_tiles_with_a_tile_of_one_item():
    rng = np.random.default_rng(7)
    vectors, query, item_idx, exclude = one_user_inputs(rng, 2 * P.TILE_ITEMS + 1, 64, 0.01)
    ex = C.exclusion_lists(exclude, item_idx, 1)
    for k in (1, 100, 5000):
        same(P.exact_search(query, vectors, item_idx, k, *ex), C.exact_search(query, vectors, item_idx, k, *ex))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 200), st.integers(1, 12), st.integers(1, 12), st.integers(1, 60))
def test_probe_cells_and_ivf_search(seed, n, nlist, nprobe, k):
    rng = np.random.default_rng(seed)
    vectors, query, item_idx, exclude = one_user_inputs(rng, n, 7, 0.1)
    cuts = np.sort(rng.integers(0, n + 1, nlist - 1))  # uneven cells: empty ones, cells of one item
    offsets = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    centroids = rng.standard_normal((nlist, 8)).astype(np.float32)
    if nlist > 2:
        centroids[2] = centroids[1]  # equal distances: ties by cell number
    probes = C.probe_cells(query, centroids, nprobe)
    same([P.probe_cells(query, centroids, nprobe)], [probes])
    ex = C.exclusion_lists(exclude, item_idx, 1)
    want = C.ivf_search(query, probes, offsets, vectors, item_idx, k, *ex)
    same(P.ivf_search(query, probes, offsets, vectors, item_idx, k, *ex), want)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(0, 6))
def test_item_based(seed, k, r):
    rng = np.random.default_rng(seed)
    n_items = 80
    neighbours = np.stack([rng.permutation(n_items)[:10] for _ in range(n_items)]).astype(np.int64)
    neighbours[rng.random(neighbours.shape) < 0.1] = -1
    # zeros, negatives and NaN skipped; thirds and sevenths: float64 sums that depend on their order
    similarity = rng.choice(np.array([-0.5, 0, np.nan, 0.1, 1 / 3, 1 / 7, 0.7], np.float32), neighbours.shape)
    recent = np.full((1, 6), -1, np.int64)
    recent[0, :r] = rng.permutation(n_items)[:r]
    seen = random_csr(rng, 1, n_items, 0.1)
    allowed = rng.random(n_items) > 0.1
    want = C.item_based(neighbours, similarity, recent, seen, allowed, k)
    same(P.item_based(neighbours, similarity, recent, seen, allowed, k), want)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 60), st.integers(1, 50), st.floats(0, 0.6))
def test_ease(seed, k, m, density):
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((m, m)).astype(np.float32)
    np.fill_diagonal(weights, 0)
    items = np.sort(rng.permutation(m + 20)[:m]).astype(np.int64)
    seen = random_csr(rng, 1, m + 20, density)
    want = C.ease(weights, items, seen, k)
    same(P.ease(weights, items, seen, k), want)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 30), st.integers(1, 40))
def test_fuse(seed, n_lists, width, k):
    rng = np.random.default_rng(seed)
    n_items = 50
    items = np.concatenate([np.where(rng.random(width) < 0.2, -1, rng.permutation(n_items)[:width])
                            for _ in range(n_lists)])[None].astype(np.int64)
    weights = rng.choice(np.array([0.0, 0.25, 1 / 3, 1.0]), n_lists)
    contrib = np.concatenate([w / (61 + np.arange(width)) for w in weights])
    code = np.repeat(rng.permutation(5)[:n_lists], width).astype(np.int8)
    want = C.fuse(items, contrib, code, n_lists, n_items, k)
    same(P.fuse(items, contrib, code, n_lists, n_items, k), want)


def test_the_choice_is_the_calling_contexts():
    assert kernels() is C
    with plain_kernels():
        assert kernels() is P
        with plain_kernels():
            assert kernels() is P
        assert kernels() is P
    assert kernels() is C


@pytest.mark.parametrize("extra", [
    ['recall.u2i.sources=["als", "item_based", "recent_popular", "popular", "ease"]'],
    ["recall.u2i.search=approx", "recall.u2i.nlist=12", "recall.u2i.nprobe=3", "recall.item_based.similarity=als",
     'recall.u2i.sources=["als", "item_based", "ease", "popular"]', 'recall.u2i.blend="quota"',
     "recall.u2i.quotas={als = 0.5, ease = 0.3}"],
    ['recall.u2i.sources=["ease", "als"]', 'recall.u2i.blend="ordered"'],
], ids=["exact-five-sources", "ivf-quota", "ordered"])
def test_recommend_for_one_user_is_the_compiled_kernels(project, extra):
    """A fitted model's every source and blend: each user as a batch of one, plain == compiled."""
    spec, how, model = fitted(project, extra)
    k = spec.recall.u2i.k
    for user in range(0, model.users.n_users, 7):
        batch = model.users.batch(np.array([user]))
        want = recommend(model.side, batch, how, k)
        with plain_kernels():
            got = recommend(model.side, batch, how, k)
        same([got.items, got.scores, got.source], [want.items, want.scores, want.source])


def test_plain_kernels_never_load_numba(project):
    """A fresh interpreter answering a fitted model's user with the plain kernels has not imported
    numba or llvmlite."""
    code = ("import sys, pickle, numpy as np\n"
            "from recall.kernel.backend import plain_kernels\n"
            "from recall.sources.recommend import recommend\n"
            "side, batch, how = pickle.load(sys.stdin.buffer)\n"
            "with plain_kernels():\n"
            "    merged = recommend(side, batch, how, 20)\n"
            "assert (merged.items[0] >= 0).sum() == 20\n"
            "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))")
    import pickle

    spec, how, model = fitted(project, ['recall.u2i.sources=["als", "item_based", "recent_popular", "ease"]'])
    payload = pickle.dumps((model.side, model.users.batch(np.array([3])), how))
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True).stdout
    assert out.decode().strip() == "[]", out
