"""Row checks: counting bad rows per file/column/check, dropping below the threshold, refusing above."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recall.spec.sections import InputSection
from recall.errors import InputError
from recall.ingest.read import FileRead, RawLog
from recall.ingest.validate import validate


def raw(users, items, weight=None, event=None, ts=None, files=1) -> RawLog:
    n = len(users)
    return RawLog(
        user=pa.array(users), item=pa.array(items),
        ts=None if ts is None else np.asarray(ts, dtype=np.int64),
        ts_bad=None if ts is None else np.zeros(n, dtype=bool),
        weight=None if weight is None else np.asarray(weight, dtype=np.float64),
        event=None if event is None else pa.array(event, pa.string()),
        file_idx=(np.arange(n) % files).astype(np.int32),
        files=[FileRead(f"f{i}.parquet", 0) for i in range(files)],
    )


def test_clean_log_passes_and_weights_multiply_event_weights():
    spec = InputSection(path="x", event_weights={"view": 1.0, "buy": 5.0})
    clean, bad = validate(raw([1, 2], [3, 4], weight=[2.0, 1.0], event=["view", "buy"]), spec)
    assert bad.bad_rows == 0 and clean.weight.tolist() == [2.0, 5.0]


@pytest.mark.parametrize("kwargs, check, column", [
    ({"users": [1, None] + [1] * 8, "items": [1] * 10}, "null id", "user_id"),
    ({"users": [1] * 10, "items": ["a", " "] + ["b"] * 8}, "empty id", "item_id"),
    ({"users": [1] * 10, "items": [1] * 10, "weight": [np.nan] + [1.0] * 9}, "null or non-finite weight", "weight"),
    ({"users": [1] * 10, "items": [1] * 10, "weight": [np.inf] + [1.0] * 9}, "null or non-finite weight", "weight"),
    ({"users": [1] * 10, "items": [1] * 10, "weight": [-1.0] + [1.0] * 9}, "negative weight", "weight"),
    ({"users": [1] * 10, "items": [1] * 10, "weight": [0.0] + [1.0] * 9}, "zero weight", "weight"),
    ({"users": [1] * 10, "items": [1] * 10, "weight": [1e12] + [1.0] * 9}, "weight above max_weight", "weight"),
    ({"users": [1] * 10, "items": [1] * 10, "event": ["zap"] + ["view"] * 9}, "unknown event", "event"),
])
def test_each_check_counts_and_refuses_above_the_threshold(kwargs, check, column):
    spec = InputSection(path="x", event_weights={"view": 1.0}, max_bad_fraction=0.05)
    with pytest.raises(InputError) as err:
        validate(raw(**kwargs), spec)
    msg = str(err.value)
    assert "1 of 10 rows" in msg and check in msg and f"column {column!r}" in msg and "f0.parquet" in msg
    spec.max_bad_fraction = 0.2
    clean, bad = validate(raw(**kwargs), spec)
    assert clean.rows == 9 and bad.bad_rows == 1
    assert bad.by_check[0]["check"].startswith(check) and bad.by_check[0]["rows"] == 1


def test_unparseable_times_are_bad_rows():
    log = raw([1, 2, 3, 4], [1, 2, 3, 4], ts=[0, 0, 0, 0])
    log.ts_bad[:] = [True, False, False, False]
    with pytest.raises(InputError, match="unparseable or null time, 1 rows"):
        validate(log, InputSection(path="x"))


def test_exact_duplicates_are_dropped_but_repeats_at_other_times_are_summed_later():
    log = raw([1, 1, 1, 2], [5, 5, 5, 5], ts=[10, 10, 20, 10])
    clean, bad = validate(log, InputSection(path="x", max_bad_fraction=0.5))
    assert bad.duplicate_rows == 1 and clean.rows == 3
    clean, bad = validate(log, InputSection(path="x", duplicates="keep"))
    assert bad.duplicate_rows == 0 and clean.rows == 4


def test_message_names_the_worst_file():
    users = [None if i % 2 else 1 for i in range(20)]
    log = raw(users, [1] * 20, files=2)  # every odd row (all in file f1) has a null user
    with pytest.raises(InputError, match=r"worst: file f1.parquet column 'user_id': null id, 10 rows"):
        validate(log, InputSection(path="x"))
