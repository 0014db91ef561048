"""A published run as a folder of arrays the server memory-maps: built once by the loader, shared
by every worker through the page cache, never written again (a new run gets a new folder).

    meta.json                 job, date, run_id, source names, the item side's settings, the parts' kinds
    item_ids.npy | item_ids.offsets.npy + item_ids.utf8.npy
                              the item ids (int64, or text as UTF-8 with offsets); row i is item index i
    <table>.keys.*            the sorted keys of u2i (user ids) and i2i (item ids), stored the same way
    <table>.start.npy         int64, key i's rows are start[i]:start[i + 1]
    <table>.blocks.*          the rows in rank order, compressed (recall.serve.packed): item index,
                              score, and for u2i the source code (recall.sources.CODE)
    fresh/<refresh run_id>/   a nearline overlay of the run (`build_fresh`): meta.json, u2i.* as above
    popular.item|score.npy    the popular table's rows
    side.<array>.npy          the item side's arrays (recall.kernel.state.ItemSide, by field)

Rows are streamed a row group at a time into the arrays, so building a table costs memory for
one row group, not for the table. Every file of the run is read through one handle on its
partition and must carry the run id of the manifest, so a rerun swapping it meanwhile makes the
build fail (and the loader try again), never mix two runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recall.kernel.state import ItemIndex, ItemSide
from recall.serve.packed import pack
from recall.serve.snapshot import BUILT, Keys, Snapshot
from recall.sources import CODE, NAMES
from recall.store import item_side
from recall.store.item_side import PublishedSide
from recall.store.layout import ITEM_SIDE, SUCCESS, JobDir
from recall.store.overlay import U2I_FRESH


BUILD_NICE = 10  # a reload's build yields the CPU to the workers answering meanwhile
FORMAT = 3  # of a built folder; one of another format (an older version's) is built again


class StaleRun(Exception):
    """A partition no longer holds the run being built (a rerun replaced it): build again."""


def build(job: JobDir, date: str, run_id: str, target: Path) -> float:
    """Build the arrays of `job`'s run `run_id` of `date` into `target` (created atomically:
    a temporary folder renamed at the end). Returns the seconds it took; a target already built
    is kept as it is."""
    started = time.perf_counter()
    if is_built(target):
        return 0.0
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if not job.partition(ITEM_SIDE, date).is_dir():
            raise ValueError(f"run {run_id} of {date} has no {ITEM_SIDE} (its engine or version does not publish "
                             "one); rerun the date with this version")
        published = item_side.load(job.partition(ITEM_SIDE, date))
        if published.run_id != run_id:
            raise StaleRun(f"{ITEM_SIDE} of {date} holds run {published.run_id}, not {run_id}")
        item_ids = published.item_ids
        write_ids(tmp / "item_ids", item_ids)
        side = save_side(tmp, published.side)
        np.save(tmp / "side.weight_sum.npy", published.weight_sum)
        tables = {}
        tables["u2i"] = keyed(job.partition("u2i", date), run_id, tmp / "u2i", "user_id", "item_id", item_ids,
                              with_source=True)
        i2i = job.partition("i2i", date)
        if i2i.exists():
            tables["i2i"] = keyed(i2i, run_id, tmp / "i2i", "item_id", "similar_item_id", item_ids)
        popular = read_partition(job.partition("popular", date), run_id, ["item_id", "score"])
        np.save(tmp / "popular.item.npy", item_index(popular["item_id"], item_ids).astype(np.int64))
        np.save(tmp / "popular.score.npy", popular["score"].to_numpy().astype(np.float32))
        meta = {"format": FORMAT, "job": job.name, "date": date, "run_id": run_id, "sources": list(NAMES),
                "settings": dict(published.settings),
                "side": side, "tables": tables, "built_s": round(time.perf_counter() - started, 3)}
        (tmp / BUILT).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if target.exists() and not is_built(target):  # an older version's format (or a half-removed one)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_built(target):  # another server built it meanwhile: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - started


def build_fresh(job: JobDir, date: str, run_id: str, base: Path, target: Path) -> float:
    """Build the overlay `u2i_fresh` of `date` published by refresh `run_id` into `target`, as
    keyed arrays over the item ids of the built nightly run `base` (the overlay's items are its
    item side's). Atomic like `build`; returns the seconds it took."""
    started = time.perf_counter()
    if is_built(target):
        return 0.0
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        item_ids = read_ids(base / "item_ids")
        table = keyed(job.partition(U2I_FRESH, date), run_id, tmp / "u2i", "user_id", "item_id", item_ids,
                      with_source=True)
        meta = {"format": FORMAT, "job": job.name, "date": date, "run_id": run_id, "table": table,
                "built_s": round(time.perf_counter() - started, 3)}
        (tmp / BUILT).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if target.exists() and not is_built(target):  # an older version's format (or a half-removed one)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_built(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - started


def is_built(target: Path) -> bool:
    """Built completely (meta.json is written last) and in this version's format."""
    try:
        return json.loads((target / BUILT).read_text(encoding="utf-8")).get("format") == FORMAT
    except (FileNotFoundError, ValueError):
        return False


def save_side(folder: Path, side: ItemSide) -> dict:
    """The item side's arrays, one .npy per field; returns how to put it together again."""
    np.save(folder / "side.allowed.npy", side.allowed)
    np.save(folder / "side.popular.items.npy", side.popular.items)
    np.save(folder / "side.popular.scores.npy", side.popular.scores)
    if side.factors is not None:
        np.save(folder / "side.factors.npy", side.factors)
    parts = {}
    for name, part in side.parts.items():
        if factors_order(part, side):
            parts[name] = {"kind": "ItemIndex", "scalars": {}, "factors_order": True}
            continue
        scalars = {}
        for field in dataclasses.fields(part):
            value = getattr(part, field.name)
            if isinstance(value, np.ndarray):
                np.save(folder / f"side.{name}.{field.name}.npy", value)
            else:
                scalars[field.name] = value
        parts[name] = {"kind": type(part).__name__, "scalars": scalars}
    return {"factors": side.factors is not None, "parts": parts}


def factors_order(part, side: ItemSide) -> bool:
    """An exact index over every item can be served in item order, over the factors themselves:
    exact top-k does not depend on the order items are scored in (a one-user search scores them
    all in one block), and the factors are then mapped once, not twice."""
    return (isinstance(part, ItemIndex) and not part.approx and side.factors is not None
            and part.size == side.n_items and bool(side.allowed.all()))


def keyed(folder: Path, run_id: str, out: Path, key: str, item: str, item_ids: pa.Array,
          with_source: bool = False) -> dict:
    """A table sorted by key then rank, as sorted keys, row offsets and per-row columns."""
    fd, marker = open_partition(folder, run_id)
    try:
        total = int(marker["rows"])
        # the rows in plain columns first (on disk, beside the build), packed into blocks at the end
        items = np.lib.format.open_memmap(f"{out}.raw-item.npy", "w+", index_type(len(item_ids)), (total,))
        scores = np.lib.format.open_memmap(f"{out}.raw-score.npy", "w+", np.float32, (total,))
        sources = np.lib.format.open_memmap(f"{out}.raw-source.npy", "w+", np.int8, (total,)) if with_source else None
        keys, starts, done, last, key_type = [], [], 0, None, None
        columns = [key, item, "score", "rank"] + (["source"] if with_source else [])
        for batch in batches(fd, marker, columns):
            n, ids = batch.num_rows, batch[key]
            key_type = ids.type
            new = np.ones(n, bool)
            new[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            if last is not None:
                new[0] = ids[0] != last
            last = ids[n - 1]
            first = np.flatnonzero(new) + done
            # rank must be the row's place in its key's list: serving by position relies on it
            known = np.concatenate([starts[-1][-1:] if starts else [], first]).astype(np.int64)
            rows = np.arange(done, done + n)
            owner = known[np.searchsorted(known, rows, side="right") - 1]
            if not np.array_equal(batch["rank"].to_numpy(), rows - owner + 1):
                raise ValueError(f"{folder}: rows are not sorted by {key} then rank")
            keys.append(ids.take(pa.array(first - done)))
            starts.append(first)
            items[done:done + n] = item_index(batch[item], item_ids)
            scores[done:done + n] = batch["score"].to_numpy()
            if with_source:
                sources[done:done + n] = source_codes(batch["source"])
            done += n
        if done != total:
            raise ValueError(f"{folder}: read {done} rows, _SUCCESS says {total}")
        all_keys = pa.concat_arrays(keys) if keys else pa.array([], key_type or pa.int64())
        if len(all_keys) > 1 and not pc.all(pc.less(all_keys.slice(0, len(all_keys) - 1), all_keys.slice(1))).as_py():
            raise ValueError(f"{folder}: {key} is not sorted")
        write_ids(Path(f"{out}.keys"), all_keys)
        start = np.append(np.concatenate(starts) if starts else [], total).astype(np.int64)
        np.save(f"{out}.start.npy", start)
        packed = pack(out, start, items, scores, sources)
        lengths = np.diff(start)
        return {"rows": total, "keys": len(all_keys), "width": int(lengths.max()) if lengths.size else 0,
                "packed": packed}
    finally:
        os.close(fd)
        for column in ("item", "score", "source"):
            Path(f"{out}.raw-{column}.npy").unlink(missing_ok=True)


def batches(fd: int, marker: dict, columns: list[str], size: int = 1 << 20):
    """The partition's rows in record batches of at most `size`, through the folder handle `fd`."""
    for name in marker["files"]:
        handle = os.open(name, os.O_RDONLY, dir_fd=fd)
        with os.fdopen(handle, "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=size, columns=columns):
                if batch.num_rows:
                    yield batch


def read_partition(folder: Path, run_id: str, columns: list[str]) -> pa.Table:
    fd, marker = open_partition(folder, run_id)
    try:
        return pa.Table.from_batches(list(batches(fd, marker, columns)))
    finally:
        os.close(fd)


def open_partition(folder: Path, run_id: str) -> tuple[int, dict]:
    """A handle on the partition folder and its _SUCCESS, which must be of run `run_id`."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        handle = os.open(SUCCESS, os.O_RDONLY, dir_fd=fd)
        with os.fdopen(handle, "rb") as fh:
            marker = json.loads(fh.read())
        if marker.get("run_id") != run_id:
            raise StaleRun(f"{folder} holds run {marker.get('run_id')}, not {run_id}")
        return fd, marker
    except BaseException:
        os.close(fd)
        raise


def index_type(n_items: int) -> np.dtype:
    """The narrowest type for item indices: 2 bytes a row instead of 4 for most catalogues."""
    return np.dtype(np.uint16 if n_items <= np.iinfo(np.uint16).max + 1 else np.int32)


def item_index(ids: pa.Array | pa.ChunkedArray, item_ids: pa.Array) -> np.ndarray:
    """Each id's row in the item side (every id of a run's tables is one of its items)."""
    if ids.type != item_ids.type:  # e.g. a string column against large_string ids
        ids = ids.cast(item_ids.type)
    found = pc.index_in(ids, value_set=item_ids)
    if found.null_count:
        raise ValueError(f"{found.null_count} item ids of the table are not in the item side")
    return found.to_numpy(zero_copy_only=False).astype(np.int32)


def source_codes(names: pa.Array) -> np.ndarray:
    """Source names as the kernel's codes."""
    table = pa.array(list(CODE), pa.string())
    codes = pc.index_in(names.cast(pa.string()), value_set=table)
    if codes.null_count:
        raise ValueError("a u2i row has a source this version does not know")
    known = np.array(list(CODE.values()), np.int8)
    return known[codes.to_numpy(zero_copy_only=False)]


def write_ids(stem: Path, ids: pa.Array) -> None:
    """Ids as the server reads them without Arrow (recall.serve.snapshot.Keys): integers as
    `<stem>.npy` (int64), text as `<stem>.utf8.npy` (the UTF-8 bytes) and `<stem>.offsets.npy`."""
    if pa.types.is_integer(ids.type):
        np.save(stem.with_name(stem.name + ".npy"), ids.to_numpy(zero_copy_only=False).astype(np.int64))
        return
    text = ids.cast(pa.large_string())
    _, offsets, data = text.buffers()
    first = np.frombuffer(offsets, np.int64, len(text) + 1, text.offset * 8)
    utf8 = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    np.save(stem.with_name(stem.name + ".offsets.npy"), first - first[0])
    np.save(stem.with_name(stem.name + ".utf8.npy"), utf8[first[0]:first[-1]])


def read_ids(stem: Path) -> pa.Array:
    """Ids written by `write_ids`, as an Arrow array."""
    keys = Keys.open(stem)
    if keys.integer:
        return pa.array(np.asarray(keys.ints))
    return pa.array(keys.values(), pa.large_string())


def main(argv: list[str]) -> int:
    """`python -m recall.serve.build JOB_FOLDER DATE RUN_ID TARGET` (what the loader runs): build,
    then open the result as every worker will, so a broken run fails here and not there. Exit 0,
    75 when a rerun replaced the run meanwhile, 1 with the reason on the last stderr line.
    `--fresh JOB_FOLDER DATE REFRESH_RUN_ID BASE TARGET` builds a nearline overlay on the built
    run BASE. Runs at a lower priority (BUILD_NICE): the workers' answers come first."""
    os.nice(BUILD_NICE)
    fresh = argv[0] == "--fresh"
    if fresh:
        argv = argv[1:]
    job, date, run_id, target = JobDir(Path(argv[0])), argv[1], argv[2], Path(argv[-1])
    try:
        if fresh:
            seconds = build_fresh(job, date, run_id, Path(argv[3]), target)
            Snapshot.open(Path(argv[3])).with_fresh(target)
        else:
            seconds = build(job, date, run_id, target)
            Snapshot.open(target).model.load()
    except StaleRun as exc:
        print(exc, file=sys.stderr)
        return 75
    except Exception as exc:  # noqa: BLE001 - the loader reports it and keeps the old run
        traceback.print_exc()
        shutil.rmtree(target, ignore_errors=True)
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
