"""The duplicate-row check narrowed by time gives the same answer as comparing every column."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from recall.ingest.read import FileRead, RawLog
from recall.ingest.validate import duplicate_rows


def test_duplicate_rows_equals_the_full_comparison():
    rng = np.random.default_rng(2)
    n = 20_000
    user = rng.integers(0, 50, n)
    item = rng.integers(0, 40, n)
    ts = rng.integers(0, 300, n) * 1_000_000  # coarse times: many rows share one
    event = rng.choice(["view", "click"], n)
    weight = rng.choice([1.0, 2.0], n)
    log = RawLog(user=pa.array(user.astype(str)), item=pa.array(item), ts=ts, ts_bad=np.zeros(n, bool),
                 weight=weight, event=pa.array(event), file_idx=np.zeros(n, np.int32),
                 files=[FileRead("f", n)])
    candidates = rng.random(n) < 0.95
    want = pd.DataFrame({"u": user, "i": item, "t": ts, "w": weight, "e": event}).duplicated(keep="first")
    got = duplicate_rows(log, candidates)
    assert got.sum() > 0
    np.testing.assert_array_equal(got, want.to_numpy() & candidates)


def test_unique_times_mean_no_duplicates():
    n = 1000
    log = RawLog(user=pa.array(np.zeros(n, np.int64)), item=pa.array(np.zeros(n, np.int64)),
                 ts=np.arange(n, dtype=np.int64), ts_bad=np.zeros(n, bool), weight=None, event=None,
                 file_idx=np.zeros(n, np.int32), files=[FileRead("f", n)])
    assert not duplicate_rows(log, np.ones(n, bool)).any()
