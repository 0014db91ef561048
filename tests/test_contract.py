"""The u2i contract (README, guarantees to readers, 3) on the table each engine publishes, read
back with plain pyarrow and checked against the window read on its own (recall.contract)."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from recall.contract import u2i_violations
from recall.sources import NAMES
from tests.support.engines import engine_args
from tests.support.files import manifest, out_dir, table
from tests.support.project import DATE, RUN_DATE

LOOKBACK = 10  # the small spec's window
CASES = {  # overrides, and the u2i k they give
    "default blend, blocklist": ([], 20),
    "als alone, approximate search": (["--set", 'recall.u2i.sources=["als"]', "--set", 'recall.u2i.search="approx"',
                                       "--set", "recall.u2i.nlist=20", "--set", "recall.u2i.nprobe=2"], 20),
    "ordered blend, k above most catalogues": (["--set", 'recall.u2i.blend="ordered"', "--set", "recall.u2i.k=390"], 390),
}


def window(root) -> pa.Table:
    days = [(RUN_DATE - dt.timedelta(days=i)).isoformat() for i in range(LOOKBACK)]
    data = ds.dataset(root / "data" / "log", format="parquet", partitioning="hive")
    return data.to_table(columns=["user_id", "item_id"], filter=ds.field("dt").cast(pa.string()).isin(days))


@pytest.mark.parametrize("case", list(CASES))
def test_published_u2i_keeps_the_contract(engine: str, case: str, project, run_engine):
    seen = window(project)
    popular = seen.group_by("item_id").aggregate([("user_id", "count_distinct")]) \
        .sort_by([("user_id_count_distinct", "descending")])
    blocklist = popular.column("item_id").to_pylist()[:3]  # the most popular items: the fallback must skip them
    overrides, k = CASES[case]
    res = run_engine(engine, project, "run", "small", "--date", DATE, *engine_args(engine), *overrides,
                     "--set", f"filter.blocklist={blocklist}")
    assert res.returncode == 0, res.stderr
    out = out_dir(project)
    u2i = table(out, "u2i")
    assert u2i_violations(u2i, seen, blocklist, k, set(NAMES)) == []
    assert u2i.num_rows == manifest(out)["tables"]["u2i"]["rows"]
    assert manifest(out)["engine"] == engine


def test_the_checker_finds_what_is_broken(project, cli):
    """The contract check itself can fail: each kind of damage to a good table is named."""
    assert cli(project, "run", "small", "--date", DATE).returncode == 0
    seen, good = window(project), table(out_dir(project), "u2i")
    assert u2i_violations(good, seen, [], 20, set(NAMES)) == []
    first_seen = seen.slice(0, 1).to_pylist()[0]
    damaged = {
        "a seen item": good.set_column(1, "item_id", pa.array(
            [first_seen["item_id"] if u == first_seen["user_id"] and r == 1 else i for u, i, r in
             zip(good["user_id"].to_pylist(), good["item_id"].to_pylist(), good["rank"].to_pylist())])),
        "a missing user": good.filter(pa.compute.not_equal(good["user_id"], good["user_id"][0])),
        "a gap in the ranks": good.filter(pa.compute.not_equal(good["rank"], 2)),
        "an unknown source": good.set_column(4, "source", pa.array(["magic"] * good.num_rows)),
    }
    for what, broken in damaged.items():
        assert u2i_violations(broken, seen, [], 20, set(NAMES)), what
