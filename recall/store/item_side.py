"""The model's item side as a published partition, `<job>/item_side/dt=D/`: what a server (or
any reader) needs to answer for a user the u2i table does not hold, without the training run.

Named Parquet files (pyarrow, DuckDB, Spark and pandas open them as they are; nothing Python-only) and one
JSON file. Item indices (`item_index`, `neighbour_index`) are rows of `items.parquet`:

    items.parquet           item_index, item_id (the input's type), allowed, weight_sum (the
                            item's summed interaction weight in the window, bm25's statistic),
                            factors (ALS item vector, fixed-size list of float32; when trained)
    popular.parquet         item_index, score: the fallback ranking of every allowed item, best first
    <source>.parquet        a source's part, by its kind (settings.json `parts`):
                              ranking     item_index, score, best first (recent_popular)
                              neighbours  item_index, neighbour_index, score, rank (item_based)
                              item_index  position, item_index: the als search order; with
                                          <source>_cells.parquet (cell, start, stop, centroid)
                                          when the search is an inverted file
                              ease        item_index, weights (its row of EASE's item-item
                                          matrix over the modelled items, in item_index order)
    settings.json           format, job, date, run_id, items, the model's settings (factors,
                            regularization, alpha, weighting, bm25_k1, bm25_b), u2i k, the blend,
                            recent_items, and each part's kind, file and shape

`load` rebuilds the kernel's `ItemSide` (plain numpy) from it, so `recommend()` answers exactly
as it did in the run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recall.kernel import compiled
from recall.kernel.blend import Blend
from recall.kernel.foldin import FoldSettings
from recall.kernel.state import ItemIndex, ItemSide, Neighbours, Ranking
from recall.sources.ease import Ease
from recall.store.atomic import fsync_file
from recall.store.layout import SUCCESS

FORMAT = 1
SETTINGS = "settings.json"


@dataclass(frozen=True)
class PublishedSide:
    """An item side as published: ids, the kernel's ItemSide and the settings to answer with it."""

    item_ids: pa.Array  # row i is item index i
    side: ItemSide
    blend: Blend
    k: int  # the u2i table's k
    recent_items: int  # how many of a user's recent items the sources read
    fold: FoldSettings | None  # None without ALS factors
    weight_sum: np.ndarray  # float32 per item: summed weights in the window (bm25's item statistic)
    run_id: str = ""
    date: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)


# --- writing ---------------------------------------------------------------------------


def write(folder: Path, published: PublishedSide, job: str, compression: str = "zstd") -> None:
    """Write the item side into a staged partition folder (sealed with its names kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    side = published.side
    n = side.n_items
    items = {"item_index": pa.array(np.arange(n, dtype=np.int64)), "item_id": published.item_ids,
             "allowed": pa.array(side.allowed, pa.bool_()), "weight_sum": pa.array(published.weight_sum, pa.float32())}
    if side.factors is not None:
        items["factors"] = vectors(side.factors)
    put(folder, "items.parquet", pa.table(items), compression)
    put(folder, "popular.parquet", ranking_table(side.popular), compression)
    parts = {}
    for name, part in side.parts.items():
        parts[name] = write_part(folder, name, part, compression)
    settings = {
        "format": FORMAT, "job": job, "date": published.date, "run_id": published.run_id, "items": n,
        "model": None if published.fold is None else vars(published.fold),
        "u2i": {"k": published.k}, "blend": published.blend.to_dict(), "recent_items": published.recent_items,
        "popular": "popular.parquet", "parts": parts,
    }
    path = folder / SETTINGS
    path.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    fsync_file(path)


def write_part(folder: Path, name: str, part: Any, compression: str) -> dict:
    """One source's part in the file(s) its kind uses; returns its entry of settings.json."""
    file = f"{name}.parquet"
    if isinstance(part, Ranking):
        put(folder, file, ranking_table(part), compression)
        return {"kind": "ranking", "file": file}
    if isinstance(part, Neighbours):
        width = part.items.shape[1]
        valid = part.items >= 0
        rows = np.repeat(np.arange(len(part.items), dtype=np.int64), valid.sum(axis=1))
        rank = np.cumsum(valid, axis=1)[valid].astype(np.int32)
        put(folder, file, pa.table({"item_index": rows, "neighbour_index": part.items[valid],
                                    "score": pa.array(part.scores[valid], pa.float32()), "rank": rank}), compression)
        return {"kind": "neighbours", "file": file, "width": width}
    if isinstance(part, ItemIndex):
        put(folder, file, pa.table({"position": np.arange(part.size, dtype=np.int64), "item_index": part.item_idx}),
            compression)
        entry = {"kind": "item_index", "file": file, "mode": part.mode}
        if part.approx:
            cells = f"{name}_cells.parquet"
            put(folder, cells, pa.table({"cell": np.arange(part.nlist, dtype=np.int32), "start": part.offsets[:-1],
                                         "stop": part.offsets[1:], "centroid": vectors(part.centroids)}), compression)
            entry.update(cells=cells, nlist=part.nlist, nprobe=part.nprobe)
        return entry
    if isinstance(part, Ease):
        put(folder, file, pa.table({"item_index": part.items, "weights": vectors(part.weights)}), compression)
        return {"kind": "ease", "file": file}
    raise TypeError(f"item side part {name!r}: no published form for {type(part).__name__}")


def ranking_table(ranking: Ranking) -> pa.Table:
    return pa.table({"item_index": pa.array(ranking.items, pa.int64()), "score": pa.array(ranking.scores, pa.float32())})


def vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def put(folder: Path, name: str, table: pa.Table, compression: str) -> None:
    pq.write_table(table, folder / name, compression=None if compression == "none" else compression)
    fsync_file(folder / name)


# --- reading ---------------------------------------------------------------------------


def load(folder: Path) -> PublishedSide:
    """The item side published in `folder` (a `item_side/dt=D` partition), as the kernel's
    ItemSide. Every file is opened through one handle on the folder and must belong to the run
    its _SUCCESS names, so a rerun swapping the partition meanwhile raises, never mixes runs
    (FileNotFoundError, or ValueError: read again)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        marker = json.loads(read_at(fd, SUCCESS))
        settings = json.loads(read_at(fd, SETTINGS))
        if settings.get("format") != FORMAT:
            raise ValueError(f"{folder}: item side format {settings.get('format')!r}, this version reads {FORMAT}")
        if settings["run_id"] != marker["run_id"]:
            raise ValueError(f"{folder}: settings.json of run {settings['run_id']}, _SUCCESS of run {marker['run_id']}")

        def table(name: str) -> pa.Table:
            if name not in marker["files"]:
                raise ValueError(f"{folder}: {name} is not listed in _SUCCESS")
            handle = os.open(name, os.O_RDONLY, dir_fd=fd)
            with os.fdopen(handle, "rb") as fh:
                return pq.read_table(fh)

        items = table("items.parquet")
        n = items.num_rows
        factors = matrix(items["factors"]) if "factors" in items.column_names else None
        parts = {name: read_part(table, entry, factors, n) for name, entry in settings["parts"].items()}
        side = ItemSide(items["allowed"].to_numpy().astype(bool), ranking(table(settings["popular"])), parts, factors)
        model = settings.get("model")
        return PublishedSide(
            item_ids=items["item_id"].combine_chunks(), side=side, blend=Blend.from_dict(settings["blend"]),
            k=int(settings["u2i"]["k"]), recent_items=int(settings["recent_items"]),
            fold=FoldSettings(**model) if model and factors is not None else None,
            weight_sum=items["weight_sum"].to_numpy(), run_id=settings["run_id"], date=settings["date"],
            settings=settings)
    finally:
        os.close(fd)


def read_part(table, entry: dict, factors: np.ndarray | None, n_items: int) -> Any:
    kind = entry["kind"]
    if kind == "ranking":
        return ranking(table(entry["file"]))
    if kind == "neighbours":
        t = table(entry["file"])
        items = np.full((n_items, int(entry["width"])), -1, np.int64)
        scores = np.full(items.shape, -np.inf, np.float32)
        row, col = t["item_index"].to_numpy(), t["rank"].to_numpy().astype(np.int64) - 1
        items[row, col] = t["neighbour_index"].to_numpy()
        scores[row, col] = t["score"].to_numpy()
        return Neighbours(items, scores)
    if kind == "item_index":
        if factors is None:
            raise ValueError(f"{entry['file']}: an item index needs the ALS factors in items.parquet")
        order = table(entry["file"]).sort_by("position")["item_index"].to_numpy()
        ordered = np.ascontiguousarray(factors[order])
        if entry.get("cells"):
            cells = table(entry["cells"]).sort_by("cell")
            offsets = np.append(cells["start"].to_numpy(), cells["stop"].to_numpy()[-1:]).astype(np.int64)
            return ItemIndex(order, ordered, matrix(cells["centroid"]), offsets, int(entry["nprobe"]),
                             compiled.cell_bounds(ordered, offsets))
        return ItemIndex(order, ordered, bounds=compiled.norm_bounds(ordered))
    if kind == "ease":
        t = table(entry["file"])
        return Ease(t["item_index"].to_numpy().astype(np.int64), matrix(t["weights"]))
    raise ValueError(f"unknown item side part kind {kind!r}")


def ranking(t: pa.Table) -> Ranking:
    return Ranking(t["item_index"].to_numpy().astype(np.int64), t["score"].to_numpy().astype(np.float32))


def matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as an n x width float32 matrix."""
    arr = column.combine_chunks()
    return np.ascontiguousarray(arr.flatten().to_numpy().reshape(len(arr), arr.type.list_size), dtype=np.float32)


def read_at(dir_fd: int, name: str) -> bytes:
    handle = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(handle, "rb") as fh:
        return fh.read()
