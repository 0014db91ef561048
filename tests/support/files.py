"""What a job folder holds: published files, markers, manifests, history, snapshots, logs."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from recall.store import item_side
from recall.store.layout import ITEM_SIDE
from tests.support.project import DATE

NOT_PUBLISHED = ("_lock", "_history.jsonl")


def out_dir(root: Path, job: str = "small") -> Path:
    return root / "data" / "recall" / job


def published_files(out: Path) -> dict[str, bytes]:
    """Bytes of every file readers rely on: tables, _SUCCESS, manifests, _LATEST (not the lock,
    the run history, or staging)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in NOT_PUBLISHED and "_staging" not in p.relative_to(out).parts}


def success_markers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("_SUCCESS") if "_staging" not in p.parts)


def staging_left(out: Path) -> list[str]:
    folder = out / "_staging"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def manifest(out: Path, date: str = DATE) -> dict:
    return json.loads((out / "_manifest" / f"dt={date}.json").read_text())


def table(out: Path, name: str, date: str = DATE) -> pa.Table:
    """A published partition read back with plain pyarrow, sorted as written."""
    return ds.dataset(out / name / f"dt={date}", format="parquet").to_table()


def assert_consistent(out: Path, date: str = DATE) -> dict:
    """Every table of the date's manifest has _SUCCESS of the manifest's run, its row count, and
    no duplicate keys; returns the manifest."""
    m = manifest(out, date)
    for name, info in m["tables"].items():
        marker = json.loads((out / name / f"dt={date}" / "_SUCCESS").read_text())
        assert marker["run_id"] == m["run_id"], (name, marker["run_id"], m["run_id"])
        if name == ITEM_SIDE:  # named files of several schemas: read as its own reader does
            assert item_side.load(out / name / f"dt={date}").run_id == m["run_id"]
            assert marker["rows"] == info["rows"], name
            continue
        data = table(out, name, date)
        assert data.num_rows == info["rows"] == marker["rows"], name
        keys = {"u2i": ["user_id", "item_id"], "i2i": ["item_id", "similar_item_id"], "popular": ["item_id"]}
        assert not data.select(keys[name]).to_pandas().duplicated().any(), f"duplicate rows in {name}"
    return m


def partitions(root: Path, job: str, table: str = "u2i") -> list[str]:
    folder = out_dir(root, job) / table
    return sorted(p.name[3:] for p in folder.glob("dt=*")) if folder.is_dir() else []


def history(root: Path, job: str = "small") -> list[dict]:
    path = out_dir(root, job) / "_history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file under `folder`: inode, size, mtime and bytes (what a loser must leave alone)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = os.stat(p)
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_size, st.st_mtime_ns, p.read_bytes())
    return out


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def logged(root: Path, job: str) -> str:
    """Every record of the job's log, its rotated and compressed files included."""
    text = ""
    for p in sorted((root / "logs").glob(f"{job}.*")):
        text += gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
    return text
