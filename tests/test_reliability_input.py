"""Bad input and bad specs through the real CLI: the documented exit code, one stderr line naming
what is wrong and where, nothing published, the previous output byte-identical, no staging left.
Bad rows past input.max_bad_fraction fail; below it they are dropped and counted in the manifest."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.support.failures import assert_refused, assert_untouched, record
from tests.support.files import assert_consistent, out_dir, published_files, success_markers
from tests.support.inputs import window_frame, write_csv, write_partitioned
from tests.support.project import DATE



BAD_DAY = "2026-11-18"  # the file that holds a case's bad rows
SHARE = 0.05  # of the window's rows: past the default max_bad_fraction of 0.01
RUN = ["run", "small", "--date", DATE, "--force"]
BAD = ["--set", 'input.path="data/bad"']
BAD_CSV = ["--set", 'input.path="data/bad.csv"']


def frame_of(root: Path) -> pd.DataFrame:
    """The baseline's window without its few exact duplicates, so each case's count is its own."""
    frame = window_frame(root / "data" / "log")
    return frame.drop_duplicates(["user_id", "item_id", "ts", "event"]).reset_index(drop=True)


def bad_rows(frame: pd.DataFrame, share: float = SHARE) -> pd.Index:
    """The first share-of-the-window rows of BAD_DAY."""
    n = int(len(frame) * share)
    return frame.index[frame["dt"] == BAD_DAY][:n]


def count(root: Path, share: float = SHARE) -> str:
    return f"{len(bad_rows(frame_of(root), share))} rows"


# --- builders: each prepares the project and returns the CLI arguments ---------------------


def missing_path(root: Path) -> list[str]:
    return [*RUN, "--set", 'input.path="data/nothing"']


def missing_run_date(root: Path) -> list[str]:
    frame = frame_of(root)
    write_partitioned(frame[frame["dt"] != DATE], root / "data" / "bad")
    return [*RUN, *BAD]


def zero_byte_parquet(root: Path) -> list[str]:
    folder = write_partitioned(frame_of(root), root / "data" / "bad")
    (folder / f"dt={DATE}" / "part-00000.parquet").write_bytes(b"")
    return [*RUN, *BAD]


def zero_byte_csv(root: Path) -> list[str]:
    (root / "data" / "bad.csv").write_bytes(b"")
    return [*RUN, *BAD_CSV]


def truncated_parquet(root: Path) -> list[str]:
    folder = write_partitioned(frame_of(root), root / "data" / "bad")
    part = folder / "dt=2026-11-19" / "part-00000.parquet"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    return [*RUN, *BAD]


def garbage_parquet(root: Path) -> list[str]:
    folder = write_partitioned(frame_of(root), root / "data" / "bad")
    (folder / "dt=2026-11-19" / "part-00000.parquet").write_bytes(np.random.default_rng(1).bytes(5000))
    return [*RUN, *BAD]


def header_only_csv(root: Path) -> list[str]:
    (root / "data" / "bad.csv").write_text("user_id,item_id,event,ts\n")
    return [*RUN, *BAD_CSV]


def old_rows_only_csv(root: Path) -> list[str]:
    frame = frame_of(root)
    frame["ts"] = frame["ts"] - pd.Timedelta(days=60)
    write_csv(frame, root / "data" / "bad.csv")
    return [*RUN, *BAD_CSV]


def empty_partitions(root: Path) -> list[str]:
    write_partitioned(frame_of(root), root / "data" / "bad", per_day=lambda day, t: t.slice(0, 0))
    return [*RUN, *BAD]


def renamed_user_column(root: Path) -> list[str]:
    def rename(day: str, t: pa.Table) -> pa.Table:
        return t.rename_columns(["uid" if c == "user_id" else c for c in t.column_names]) if day == BAD_DAY else t

    write_partitioned(frame_of(root), root / "data" / "bad", per_day=rename)
    return [*RUN, *BAD]


def missing_item_column(root: Path) -> list[str]:
    write_partitioned(frame_of(root), root / "data" / "bad",
                      per_day=lambda day, t: t.drop_columns(["item_id"]) if day == BAD_DAY else t)
    return [*RUN, *BAD]


def id_type_changes(root: Path) -> list[str]:
    def as_text(day: str, t: pa.Table) -> pa.Table:
        return t.set_column(0, "user_id", t["user_id"].cast(pa.string())) if day == BAD_DAY else t

    write_partitioned(frame_of(root), root / "data" / "bad", per_day=as_text)
    return [*RUN, *BAD]


def with_rows(change: Callable[[pd.DataFrame, pd.Index], pd.DataFrame], share: float = SHARE,
              weight: bool = False) -> Callable[[Path], list[str]]:
    """A builder altering the bad rows of the window (optionally with a weight column of 1.0)."""

    def build(root: Path) -> list[str]:
        frame = frame_of(root)
        if weight:
            frame["weight"] = 1.0
        write_partitioned(change(frame, bad_rows(frame, share)), root / "data" / "bad")
        return [*RUN, *BAD]

    return build


def set_value(column: str, value, dtype: str | None = None):
    def change(frame: pd.DataFrame, rows: pd.Index) -> pd.DataFrame:
        if dtype:
            frame[column] = frame[column].astype(dtype)
        frame.loc[rows, column] = value
        return frame

    return change


def replayed(frame: pd.DataFrame, rows: pd.Index) -> pd.DataFrame:
    """An ingestion replay: the rows appear twice (same user, item, time, event)."""
    return pd.concat([frame, frame.loc[rows]]).sort_values(["dt", "ts"], kind="stable")


def unparseable_times(share: float = SHARE) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        frame = frame_of(root)
        rows = bad_rows(frame, share)
        frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        frame.loc[rows, "ts"] = "last tuesday"
        write_csv(frame, root / "data" / "bad.csv")
        return [*RUN, *BAD_CSV]

    return build


def float_ids_parquet(root: Path) -> list[str]:
    frame = frame_of(root)
    frame["user_id"] = (frame["user_id"] + 2**53).astype("float64")  # 2^53 + odd collapses to even
    write_partitioned(frame, root / "data" / "bad")
    return [*RUN, *BAD]


def float_ids_csv(root: Path) -> list[str]:
    frame = frame_of(root)
    frame["user_id"] = frame["user_id"].map(lambda u: f"{float(u + 2**53):.1f}")
    write_csv(frame, root / "data" / "bad.csv")
    return [*RUN, *BAD_CSV]


def ids_beyond_int64(root: Path) -> list[str]:
    frame = frame_of(root)
    schema = pa.schema([("user_id", pa.uint64()), ("item_id", pa.int64()), ("event", pa.string()),
                        ("ts", pa.timestamp("us", tz="UTC"))])
    frame["user_id"] = frame["user_id"].astype("uint64") + np.uint64(2**63)
    write_partitioned(frame, root / "data" / "bad", schema=schema)
    return [*RUN, *BAD]


def text_weights(root: Path) -> list[str]:
    frame = frame_of(root)
    frame["weight"] = "1.0"
    write_partitioned(frame, root / "data" / "bad")
    return [*RUN, *BAD]


def single_item(root: Path) -> list[str]:
    frame = frame_of(root)
    frame["item_id"] = frame["item_id"].iloc[0]
    write_partitioned(frame, root / "data" / "bad")
    return [*RUN, *BAD]


def bad_partition_name(root: Path) -> list[str]:
    frame = frame_of(root)
    folder = write_partitioned(frame, root / "data" / "bad")
    (folder / "dt=2026-02-30").mkdir()
    pq.write_table(pa.Table.from_pandas(frame.drop(columns="dt").head(5), preserve_index=False),
                   folder / "dt=2026-02-30" / "part-00000.parquet")
    return [*RUN, *BAD]


def all_blocklisted(root: Path) -> list[str]:
    items = sorted(set(frame_of(root)["item_id"]))
    (root / "data" / "blocked.txt").write_text("".join(f"{i}\n" for i in items))
    return [*RUN, "--set", 'filter.blocklist_path="data/blocked.txt"']


def missing_blocklist(root: Path) -> list[str]:
    return [*RUN, "--set", 'filter.blocklist_path="data/blocked.txt"']


def events_without_weights(root: Path) -> list[str]:
    return [*RUN, "--set", "input.event_weights={}"]


def empty_text_ids(root: Path) -> list[str]:
    frame = frame_of(root)
    frame["item_id"] = frame["item_id"].astype(str)
    frame.loc[bad_rows(frame), "item_id"] = "  "
    write_partitioned(frame, root / "data" / "bad")
    return [*RUN, *BAD]


def spec_edit(old: str, new: str, *args: str) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        spec = root / "jobs" / "small.toml"
        text = spec.read_text()
        assert old in text
        spec.write_text(text.replace(old, new, 1))
        return list(args or RUN)

    return build


def args_only(*args: str) -> Callable[[Path], list[str]]:
    return lambda root: list(args)


@dataclass
class Case:
    name: str
    build: Callable[[Path], list[str]]
    code: int
    fragments: tuple[str, ...]  # each must be in the stderr line; "{rows}" becomes "<n> rows"


def case(name: str, build, code: int, *fragments: str) -> Case:
    return Case(name, build, code, fragments)


CASES = [
    case("missing input path", missing_path, 3, "input path does not exist", "data/nothing"),
    case("missing run-date partition", missing_run_date, 3, f"no partition dt={DATE}", "data/bad"),
    case("0-byte parquet file", zero_byte_parquet, 3, "empty file (0 bytes)", f"dt={DATE}/part-00000.parquet"),
    case("0-byte csv file", zero_byte_csv, 3, "empty file (0 bytes)", "bad.csv"),
    case("truncated parquet", truncated_parquet, 3, "cannot read parquet file", "dt=2026-11-19/part-00000.parquet"),
    case("garbage parquet", garbage_parquet, 3, "cannot read parquet file", "dt=2026-11-19/part-00000.parquet"),
    case("header-only csv", header_only_csv, 3, "no interactions in window", "bad.csv"),
    case("csv with no rows in the window", old_rows_only_csv, 3, "no interactions in window", "bad.csv"),
    case("partitions with no rows", empty_partitions, 3, "no interactions in window", "data/bad"),
    case("id column renamed in one file of several", renamed_user_column, 3, "missing column 'user_id'",
         f"dt={BAD_DAY}/part-00000.parquet"),
    case("id column missing in one file of several", missing_item_column, 3, "missing column 'item_id'",
         f"dt={BAD_DAY}/part-00000.parquet"),
    case("id type changes between files", id_type_changes, 3, "id type changes between files", "'user_id'",
         f"dt={BAD_DAY}/part-00000.parquet"),
    case("null user ids", with_rows(set_value("user_id", pd.NA, "Int64")), 3, "'user_id'", "null id",
         f"dt={BAD_DAY}", "{rows}"),
    case("empty text item ids", empty_text_ids, 3, "'item_id'", "empty id", f"dt={BAD_DAY}", "{rows}"),
    case("float ids above 2^53 (parquet)", float_ids_parquet, 3, "floating-point ids refused", "'user_id'",
         "double", "part-00000.parquet"),
    case("float ids above 2^53 (csv)", float_ids_csv, 3, "floating-point ids refused", "'user_id'", "bad.csv"),
    case("ids beyond int64 (uint64)", ids_beyond_int64, 3, "'user_id'", "beyond int64", "part-00000.parquet"),
    case("negative weights", with_rows(set_value("weight", -1.0), weight=True), 3, "'weight'",
         "negative weight", f"dt={BAD_DAY}", "{rows}"),
    case("zero weights", with_rows(set_value("weight", 0.0), weight=True), 3, "'weight'", "zero weight",
         f"dt={BAD_DAY}", "{rows}"),
    case("NaN weights", with_rows(set_value("weight", np.nan), weight=True), 3, "'weight'", "non-finite",
         f"dt={BAD_DAY}", "{rows}"),
    case("inf weights", with_rows(set_value("weight", np.inf), weight=True), 3, "'weight'", "non-finite",
         f"dt={BAD_DAY}", "{rows}"),
    case("huge weights", with_rows(set_value("weight", 1e15), weight=True), 3, "'weight'",
         "weight above max_weight", f"dt={BAD_DAY}", "{rows}"),
    case("weights that are text", text_weights, 3, "weight column 'weight'", "not a number"),
    case("unknown events", with_rows(set_value("event", "share")), 3, "'event'", "unknown event",
         f"dt={BAD_DAY}", "{rows}"),
    case("unparseable timestamps", unparseable_times(), 3, "'ts'", "unparseable", "bad.csv", "{rows}"),
    case("a single item", single_item, 3, "only 1 distinct item"),
    case("duplicate rows past the threshold", with_rows(replayed), 3, "duplicate row", f"dt={BAD_DAY}", "{rows}"),
    case("bad dt= partition name", bad_partition_name, 3, "bad partition name dt=2026-02-30"),
    case("every item blocklisted", all_blocklisted, 3, "items of the window are blocklisted"),
    case("blocklist file missing", missing_blocklist, 3, "cannot read blocklist", "blocked.txt"),
    case("event column but no event_weights", events_without_weights, 3, "'event'", "event_weights is empty"),
    # the spec and the command line: exit 2
    case("unknown spec key", spec_edit("factors = 16", "factor = 16"), 2, "unknown key 'factor'", "[model]",
         "small.toml"),
    case("unknown spec section", spec_edit("[model]", "[modle]"), 2, "unknown key 'modle'"),
    case("unknown key in --set", args_only(*RUN, "--set", "model.learning_rate=0.1"), 2,
         "unknown key 'learning_rate'"),
    case("wrong type in the spec", spec_edit("factors = 16", 'factors = "sixteen"'), 2,
         "[model] factors must be an integer", "small.toml"),
    case("float where an integer is due", spec_edit("lookback_days = 10", "lookback_days = 1.5"), 2,
         "[job] lookback_days must be an integer"),
    case("wrong type in --set", args_only(*RUN, "--set", "recall.u2i.k=true"), 2, "[recall.u2i] k must be an integer"),
    case("spec is not TOML", spec_edit("[model]", "[model"), 2, "not valid TOML", "small.toml"),
    case("k = 0", args_only(*RUN, "--set", "recall.u2i.k=0"), 2, "[recall.u2i] k must be at least 1"),
    case("unknown time zone", args_only(*RUN, "--set", 'job.timezone="Mars/Olympus"'), 2, "[job] timezone",
         "Mars/Olympus"),
    case("bad date (month 13)", args_only("run", "small", "--date", "2026-13-01"), 2, "bad date '2026-13-01'"),
    case("bad date (Feb 30)", args_only("run", "small", "--date", "2026-02-30"), 2, "bad date '2026-02-30'"),
    case("bad date (text)", args_only("backfill", "small", "--from", "yesterday", "--to", DATE), 2,
         "bad date 'yesterday'"),
    case("bad cron expression (minute 61)", spec_edit("[job]", '[job]\nschedule = "61 * * * *"'), 2,
         "bad cron expression '61 * * * *'", "small.toml"),
    case("bad cron expression (3 fields)", spec_edit("[job]", '[job]\nschedule = "* * *"'), 2,
         "bad cron expression '* * *'"),
    case("cron expression with %", spec_edit("[job]", '[job]\nschedule = "0 2 * * * %"'), 2, "bad cron expression"),
    case("job name with ';'", spec_edit("[job]", '[job]\nname = "nightly; rm -rf /"'), 2, "[job] name",
         "nightly; rm -rf /"),
    case("job name with $(...)", spec_edit("[job]", '[job]\nname = "$(touch pwned)"'), 2, "[job] name"),
    case("job name with a newline", spec_edit("[job]", '[job]\nname = "a\\nb"'), 2, "[job] name"),
    case("job name with quotes and spaces", spec_edit("[job]", "[job]\nname = \"it's a job\""), 2, "[job] name"),
    case("job name with a slash", spec_edit("[job]", '[job]\nname = "../elsewhere"'), 2, "[job] name"),
    case("unknown job", args_only("run", "nosuchjob", "--date", DATE), 2, "job spec not found", "--root DIR",
         "RECALL_ROOT"),
    case("a date that does not exist (Nov 31)", args_only("run", "small", "--date", "2026-11-31"), 2,
         "bad date '2026-11-31': no such date (November 2026 has 30 days)"),
    case("--date 9999-12-31", args_only("run", "small", "--date", "9999-12-31"), 2,
         "--date 9999-12-31 is out of range", "[job] lookback_days = 10"),
    case("--to 9999-12-31", args_only("backfill", "small", "--from", DATE, "--to", "9999-12-31"), 2,
         "--to 9999-12-31 is out of range"),
    case("lookback_days = 1000000 in --set", args_only(*RUN, "--set", "job.lookback_days=1000000"), 2,
         "recall: --set job.lookback_days=1000000: [job] lookback_days must be at most 36525 (100 years), got 1000000"),
    case("lookback_days = 1000000 in the spec", spec_edit("lookback_days = 10", "lookback_days = 1000000"), 2,
         "small.toml: [job] lookback_days must be at most 36525"),
    case("keep_days = 10**9 in --set", args_only(*RUN, "--set", "output.keep_days=1000000000"), 2,
         "--set output.keep_days=1000000000: [output] keep_days must be at most 36525"),
    case("a --set typo is blamed on the --set", args_only(*RUN, "--set", "model.factor=8"), 2,
         "recall: --set model.factor=8: unknown key 'factor' in [model] (did you mean factors?)"),
    case("a --set of the wrong type is blamed on the --set", args_only(*RUN, "--set", "recall.u2i.k=true"), 2,
         "recall: --set recall.u2i.k=true: [recall.u2i] k must be an integer"),
    case("the item column is named otherwise", args_only(*RUN, "--set", 'input.item_col="product_id"'), 3,
         "missing column 'product_id' (input.item_col)", "the file's columns: user_id, item_id, event, ts",
         "--set input.item_col=NAME"),
    case("--catch-up with --date", args_only("run", "small", "--catch-up", "--date", DATE), 2,
         "--catch-up and --date"),
]


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_and_nothing_changes(c: Case, published: Path, cli):
    out = out_dir(published)
    before, markers = published_files(out), success_markers(out)
    args = c.build(published)
    rows = count(published) if any("{rows}" in f for f in c.fragments) else ""
    res = cli(published, *args)
    record(f"bad input: {c.name}", res)
    assert_refused(res, c.code, *(f.replace("{rows}", rows) for f in c.fragments))
    assert_untouched(out, before, markers)
    assert not (published / "pwned").exists()


BELOW = 0.004  # of the window's rows: under max_bad_fraction 0.01, dropped and counted


@pytest.mark.parametrize("column,check,build", [
    ("user_id", "null id", with_rows(set_value("user_id", pd.NA, "Int64"), BELOW)),
    ("weight", "negative weight", with_rows(set_value("weight", -2.0), BELOW, weight=True)),
    ("weight", "null or non-finite weight", with_rows(set_value("weight", np.nan), BELOW, weight=True)),
    ("weight", "weight above max_weight", with_rows(set_value("weight", 1e15), BELOW, weight=True)),
    ("event", "unknown event", with_rows(set_value("event", "share"), BELOW)),
    ("ts", "unparseable or null time", unparseable_times(BELOW)),
    ("user_id,item_id,ts", "duplicate row", with_rows(replayed, BELOW)),
], ids=["null ids", "negative weights", "NaN weights", "huge weights", "unknown events", "bad times",
        "duplicates"])
def test_bad_rows_below_the_threshold_are_dropped_and_counted(column, check, build, published: Path, cli):
    args = build(published)
    n = len(bad_rows(frame_of(published), BELOW))
    res = cli(published, *args)
    record(f"bad rows below threshold: {check}", res, note=f"{n} rows dropped, counted in the manifest")
    assert res.returncode == 0, res.stderr
    out = out_dir(published)
    m = assert_consistent(out)
    assert m["input"]["bad_rows"] == n
    found = [c for c in m["input"]["checks"] if c["column"] == column and c["check"].startswith(check)]
    assert [c["rows"] for c in found] == [n], m["input"]["checks"]
    assert m["input"]["interactions"] == m["input"]["rows_in_window"] - n
    assert (out / "_LATEST").read_text().strip() == DATE
    assert "dropped" in (published / "logs" / "small.log").read_text()
