"""After a SIGKILL: what must hold right away, and what the next runs must do."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from recall.store.reader import read_arrow
from tests.support.cli import kill
from tests.support.failures import record
from tests.support.files import assert_consistent, out_dir, published_files, staging_left
from tests.support.project import DATE, FORCED, PREVIOUS


def after_crash(root: Path, before: dict[str, bytes], case: str) -> None:
    """Right after the kill: the published files are exactly as before; the reader serves them."""
    out = out_dir(root)
    after = published_files(out)
    assert after == before, sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    for date in (PREVIOUS, DATE):
        assert_consistent(out, date)
    assert read_arrow("small", "u2i", output=root / "data" / "recall").equals(
        pq.read_table(out / "u2i" / f"dt={DATE}" / "part-00000.parquet"))


def next_runs_succeed(root: Path, cli, before: dict[str, bytes], case: str) -> None:
    """The next run clears the dead run's staging and sees DATE published as it was; a forced
    rerun then replaces it cleanly: one run's files, no duplicate rows."""
    out = out_dir(root)
    res = cli(root, "run", "small", "--date", DATE)
    record(f"crash {case}: next run", res)
    assert res.returncode == 0, res.stderr
    assert "already published" in res.stdout
    assert staging_left(out) == []
    assert published_files(out) == before
    res = cli(root, *FORCED)
    record(f"crash {case}: forced rerun", res)
    assert res.returncode == 0, res.stderr
    assert staging_left(out) == []
    m = assert_consistent(out, DATE)
    for name, info in m["tables"].items():
        part = out / name / f"dt={DATE}"
        assert sorted(p.name for p in part.iterdir()) == sorted(["_SUCCESS", *info["files"]])
    previous = {k: v for k, v in before.items() if f"dt={PREVIOUS}" in k}
    assert {k: v for k, v in published_files(out).items() if f"dt={PREVIOUS}" in k} == previous


def killed(proc) -> None:
    code = kill(proc)
    assert code == -9, f"the run was not killed (exit {code}): it finished before the kill point"
