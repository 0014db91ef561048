"""Reading a window of the log: partition pruning, formats, id types, time handling."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recall.spec.sections import InputSection
from recall.errors import InputError
from recall.ingest.read import read_window
from recall.ingest.window import Window


def day_file(root: Path, date: str, users, items, **extra) -> Path:
    folder = root / f"dt={date}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(pa.table({"user_id": users, "item_id": items, **extra}), path)
    return path


def test_partitions_outside_the_window_are_not_read(tmp_path):
    for day in range(1, 11):
        day_file(tmp_path, f"2026-11-{day:02d}", [day], [day * 10])
    (tmp_path / "dt=2026-11-05" / "part-0.parquet").write_bytes(b"garbage: would fail if read")
    log = read_window(InputSection(path=str(tmp_path)), Window(dt.date(2026, 11, 10), 3), tmp_path)
    assert sorted(log.user.to_pylist()) == [8, 9, 10]
    assert [Path(f.path).parent.name for f in log.files] == ["dt=2026-11-08", "dt=2026-11-09", "dt=2026-11-10"]


def test_only_needed_columns_are_read(tmp_path):
    day_file(tmp_path, "2026-11-10", [1], [2], blob=[b"x" * 10], ts=pa.array([0], pa.timestamp("s")))
    log = read_window(InputSection(path=str(tmp_path)), Window(dt.date(2026, 11, 10), 1), tmp_path)
    assert log.weight is None and log.event is None and log.ts is not None


def test_missing_run_date_partition_is_an_input_error_unless_allowed(tmp_path):
    day_file(tmp_path, "2026-11-08", [1], [2])
    spec = InputSection(path=str(tmp_path))
    with pytest.raises(InputError, match="no partition dt=2026-11-10"):
        read_window(spec, Window(dt.date(2026, 11, 10), 3), tmp_path)
    spec.require_run_date = False
    log = read_window(spec, Window(dt.date(2026, 11, 10), 3), tmp_path)
    assert log.rows == 1 and log.missing_days == ["2026-11-09", "2026-11-10"]


def test_csv_keeps_leading_zero_ids_as_text_and_plain_integers_as_int(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,weight\n1,0012345,2\n2,0099999,1\n")
    log = read_window(InputSection(path=str(path)), Window(dt.date(2026, 1, 1), 1), tmp_path)
    assert log.user.type == pa.int64() and log.item.type == pa.string()
    assert log.item.to_pylist() == ["0012345", "0099999"]
    assert log.weight.tolist() == [2.0, 1.0]


def test_float_ids_are_refused(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1.0, 2.0], "item_id": [1, 2]}), path)
    with pytest.raises(InputError, match="floating-point ids refused: column 'user_id'.*log.parquet is double"):
        read_window(InputSection(path=str(path)), Window(dt.date(2026, 1, 1), 1), tmp_path)
    csv = tmp_path / "log.csv"
    csv.write_text("user_id,item_id\n1.5,1\n2.0,2\n")
    with pytest.raises(InputError, match="floating-point ids refused"):
        read_window(InputSection(path=str(csv)), Window(dt.date(2026, 1, 1), 1), tmp_path)


def test_id_type_change_between_files_names_both_files(tmp_path):
    day_file(tmp_path, "2026-11-09", [1], [2])
    day_file(tmp_path, "2026-11-10", ["a"], [3])
    with pytest.raises(InputError, match=r"id type changes between files: column 'user_id' is int64 in .*"
                                         r"dt=2026-11-09.* but string in .*dt=2026-11-10"):
        read_window(InputSection(path=str(tmp_path)), Window(dt.date(2026, 11, 10), 2), tmp_path)


def test_missing_id_column_in_one_file_of_several(tmp_path):
    day_file(tmp_path, "2026-11-09", [1], [2])
    folder = tmp_path / "dt=2026-11-10"
    folder.mkdir()
    pq.write_table(pa.table({"uid": [1], "item_id": [3]}), folder / "part-0.parquet")
    wanted = r"missing column 'user_id' \(input.user_col\) in .*dt=2026-11-10.*the file's columns: uid, item_id"
    with pytest.raises(InputError, match=wanted):
        read_window(InputSection(path=str(tmp_path)), Window(dt.date(2026, 11, 10), 2), tmp_path)


def test_time_window_without_partitions_uses_the_job_timezone(tmp_path):
    path = tmp_path / "log.parquet"
    times = pd_times(["2026-11-09T22:30:00", "2026-11-09T23:30:00", "2026-11-10T22:30:00", "2026-11-10T23:30:00"])
    pq.write_table(pa.table({"user_id": [1, 2, 3, 4], "item_id": [1, 2, 3, 4], "ts": times}), path)
    spec = InputSection(path=str(path))
    utc = read_window(spec, Window(dt.date(2026, 11, 10), 1, "UTC"), tmp_path)
    assert sorted(utc.user.to_pylist()) == [3, 4]
    # Paris is UTC+1 in November: its 2026-11-10 runs from 09T23:00Z to 10T23:00Z
    paris = read_window(spec, Window(dt.date(2026, 11, 10), 1, "Europe/Paris"), tmp_path)
    assert sorted(paris.user.to_pylist()) == [2, 3]


def test_numeric_and_text_times(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts\n1,1,2026-11-10T05:00:00\n2,2,not-a-time\n3,3,2026-11-10 07:00\n")
    log = read_window(InputSection(path=str(path)), Window(dt.date(2026, 11, 10), 1), tmp_path)
    assert log.ts_bad.tolist() == [False, True, False]
    seconds = tmp_path / "s.parquet"
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "ts": [1_794_286_800]}), seconds)
    log = read_window(InputSection(path=str(seconds)), Window(dt.date(2026, 11, 10), 1), tmp_path)
    assert log.rows == 1 and log.ts[0] == 1_794_286_800 * 1_000_000


@pytest.mark.parametrize("content, needle", [
    (b"", "empty file (0 bytes)"),
    (b"PAR1 this is not parquet", "cannot read parquet file"),
])
def test_unreadable_files_name_the_file(tmp_path, content, needle):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(needle)) as err:
        read_window(InputSection(path=str(path)), Window(dt.date(2026, 1, 1), 1), tmp_path)
    assert "bad.parquet" in str(err.value)


def test_empty_window_is_an_input_error(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "ts": pd_times(["2020-01-01T00:00:00"])}), path)
    with pytest.raises(InputError, match="no interactions in window 2026-11-08..2026-11-10"):
        read_window(InputSection(path=str(path)), Window(dt.date(2026, 11, 10), 3), tmp_path)


def pd_times(texts: list[str]) -> pa.Array:
    return pa.array(np.array(texts, dtype="datetime64[us]"), pa.timestamp("us"))
