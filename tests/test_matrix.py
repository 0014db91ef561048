"""Id maps, weighting and the CSR matrix."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recall.spec.sections import ModelSection
from recall.ingest.prepare import encode
from recall.model.matrix import US_PER_DAY, IdMap, confidence, decayed, reencode, to_csr
from recall.ingest.validate import CleanLog


def log(users, items, weight=None, ts=None) -> CleanLog:
    return CleanLog(pa.array(users), pa.array(items), None if ts is None else np.asarray(ts, np.int64),
                    np.asarray(weight if weight is not None else [1.0] * len(users), np.float64))


def test_id_maps_are_sorted_keep_type_and_index_back():
    inter = encode(log(["b", "a", "c", "a"], [30, 10, 20, 10]))
    assert inter.users.values.to_pylist() == ["a", "b", "c"] and inter.users.values.type == pa.string()
    assert inter.items.values.to_pylist() == [10, 20, 30] and inter.items.values.type == pa.int64()
    assert inter.user_idx.tolist() == [1, 0, 2, 0] and inter.item_idx.tolist() == [2, 0, 1, 0]
    assert IdMap(inter.items.values).index_of(pa.array([20, 99])).tolist() == [1, -1]


def test_int64_extremes_survive_the_map():
    big = [2**63 - 1, -(2**63), 0]
    inter = encode(log(big, [1, 2, 3]))
    assert inter.users.values.to_pylist() == sorted(big)


def test_repeated_pairs_are_summed_into_one_cell():
    m = to_csr(encode(log([1, 1, 2], [5, 5, 5], weight=[1.0, 2.5, 4.0])))
    assert m.shape == (2, 1) and m.nnz == 2 and m.toarray().ravel().tolist() == [3.5, 4.0]
    assert m.dtype == np.float32 and m.has_sorted_indices


def test_weightings():
    m = to_csr(encode(log([1, 1, 2, 3], [5, 6, 5, 5], weight=[1.0, 9.0, 3.0, 1.0])))
    assert np.allclose(confidence(m, ModelSection(weighting="none")).toarray(), m.toarray())
    assert np.allclose(confidence(m, ModelSection(weighting="log")).data, np.log1p(m.data))
    bm = confidence(m, ModelSection(weighting="bm25"))
    assert bm.nnz == m.nnz and (bm.data > 0).all() and np.isfinite(bm.data).all()


def test_time_decay_halves_per_half_life():
    now = 10 * US_PER_DAY
    w = decayed(np.ones(3), np.array([now, now - 2 * US_PER_DAY, now - 4 * US_PER_DAY]), now, 2.0)
    assert w.tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert decayed(np.ones(2), None, now, 2.0).tolist() == [1.0, 1.0]


def test_reencode_keeps_only_present_ids():
    inter = encode(log([1, 2, 3], [7, 8, 9]))
    sub = reencode(inter.take(np.array([False, True, True])))
    assert sub.users.values.to_pylist() == [2, 3] and sub.items.values.to_pylist() == [8, 9]
    assert sub.user_idx.tolist() == [0, 1] and sub.item_idx.tolist() == [0, 1]
