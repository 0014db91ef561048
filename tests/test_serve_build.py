"""The built run `recall serve` answers from (recall.serve.build, snapshot, packed), read in
process: packed rows decode to exactly the rows packed, and a run with text ids (leading zeros
kept) looks up to the published table's rows, id for id and bit for bit."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.serve.build import build
from recall.serve.packed import BLOCK_KEYS, Packed, pack
from recall.serve.snapshot import Snapshot
from recall.store.layout import JobDir
from recall.store.reader import read_table
from recall.store.state import read_manifest
from tests.support.inputs import window_frame, write_partitioned
from tests.support.project import DATE, write_spec


@st.composite
def tables(draw):
    """Keyed rows: list lengths (some empty), items of a narrow or wide type, scores drawn from a
    few values (coded) or any finite float32 (-0.0 included), with or without sources."""
    lengths = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3 * BLOCK_KEYS + 5))
    start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = int(start[-1])
    dtype = draw(st.sampled_from([np.uint16, np.int32]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    items = rng.integers(0, np.iinfo(np.uint16).max, rows).astype(dtype)
    if draw(st.booleans()):
        scores = rng.choice(np.array([0.5, 0.25, -0.0, 0.0, 1e-30, -3.0], np.float32), rows)
    else:
        scores = rng.standard_normal(rows).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, rows)
    sources = rng.integers(0, 5, rows).astype(np.int8) if draw(st.booleans()) else None
    return start, items, scores.astype(np.float32), sources


@settings(max_examples=60, deadline=None)
@given(table=tables(), k=st.integers(1, 50))
def test_packed_rows_decode_to_the_rows_packed(tmp_path_factory, table, k):
    start, items, scores, sources = table
    folder = tmp_path_factory.mktemp("packed")
    layout = pack(folder / "t", start, items, scores, sources)
    rows = Packed(folder, "t", start, layout)
    for at in range(len(start) - 1):
        lo = int(start[at])
        hi = min(int(start[at + 1]), lo + k)
        got_items, got_scores, got_sources = rows.rows(at, k)
        assert got_items.dtype == items.dtype and np.array_equal(got_items, items[lo:hi])
        assert np.array_equal(got_scores.view(np.uint32), scores[lo:hi].view(np.uint32))  # every bit, -0.0 too
        assert (got_sources is None) == (sources is None)
        if sources is not None:
            assert np.array_equal(got_sources, sources[lo:hi])


def test_a_run_with_text_ids_looks_up_to_the_tables_rows(tmp_path, small_log, cli):
    root = tmp_path / "project"
    shutil.copytree(small_log, root / "data" / "log")
    write_spec(root)
    frame = window_frame(root / "data" / "log")
    frame["user_id"] = frame["user_id"].map(lambda u: f"{u:07d}")
    frame["item_id"] = frame["item_id"].map(lambda i: f"0{i}")
    write_partitioned(frame, root / "data" / "ids")
    res = cli(root, "run", "small", "--date", DATE, "--set", 'input.path="data/ids"',
              "--set", "evaluate.holdout_days=0")
    assert res.returncode == 0, res.stderr
    out = root / "data" / "recall"
    job = JobDir(out / "small")
    target = tmp_path / "built"
    build(job, DATE, read_manifest(job, DATE).run_id, target)
    snap = Snapshot.open(target)
    assert not snap.integer_users and not snap.integer_items

    u2i = read_table("small", "u2i", DATE, output=out)
    for user, want in u2i.groupby("user_id", sort=False):
        fresh, (items, scores, sources) = snap.u2i_rows(user, 1000)
        assert not fresh
        assert [snap.item_values[i] for i in items] == want["item_id"].tolist()
        assert np.array_equal(scores, want["score"].to_numpy(np.float32))
        assert [snap.source_names[c] for c in sources] == want["source"].tolist()
    assert snap.u2i_rows("7", 5) is None  # "7" is not "0000007"
    assert lookups_import_nothing_heavy(target, u2i["user_id"].iloc[0])

    i2i = read_table("small", "i2i", DATE, output=out)
    for item, want in i2i.groupby("item_id", sort=False):
        items, scores, _ = snap.i2i.find(item, 1000)
        assert [snap.item_values[i] for i in items] == want["similar_item_id"].tolist()
        assert np.array_equal(scores, want["score"].to_numpy(np.float32))
        assert snap.item_values[snap.items.find(item)] == item


HEAVY = ("pyarrow", "pandas", "scipy", "numba", "llvmlite", "implicit")  # tens of MB a worker, each


def lookups_import_nothing_heavy(built: Path, user: str) -> bool:
    """A fresh interpreter that loads the app, opens the run and looks a user up has imported
    none of HEAVY; after a fold-in, SciPy only (its BLAS: the plain kernels, never numba)."""
    code = (f"import sys; import numpy as np; from pathlib import Path; from recall.serve import app\n"
            f"from recall.serve.snapshot import Snapshot\n"
            f"heavy = lambda: sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            f"snap = Snapshot.open(Path({str(built)!r})); assert snap.u2i_rows({user!r}, 10) is not None\n"
            f"print(heavy())\n"
            f"folded = snap.model.recommend(np.array([2, 0, 1]), None, 10); assert folded.items.size == 10\n"
            f"print(heavy())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "['scipy']"], out
    return True
