"""The recall tables' schemas and a streaming Parquet writer for one staged partition."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recall.kernel.state import Merged, Ranking
from recall.store.atomic import fsync_file
from recall.store.layout import part_name


def u2i_schema(user_type: pa.DataType, item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("user_id", user_type), ("item_id", item_type), ("score", pa.float32()),
                      ("rank", pa.int32()), ("source", pa.string())])


def i2i_schema(item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("item_id", item_type), ("similar_item_id", item_type), ("score", pa.float32()),
                      ("rank", pa.int32())])


def popular_schema(item_type: pa.DataType) -> pa.Schema:
    return pa.schema([("item_id", item_type), ("score", pa.float32()), ("rank", pa.int32())])


def long_rows(keys: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten a B x W candidate matrix (valid entries first in each row) to long form."""
    valid = items >= 0
    lengths = valid.sum(axis=1)
    key = np.repeat(keys, lengths)
    rank = (np.cumsum(valid, axis=1)[valid]).astype(np.int32)
    return key, items[valid], rank


def u2i_rows(users: np.ndarray, merged: Merged, user_ids: pa.Array, item_ids: pa.Array,
             source_names: pa.Array) -> pa.Table:
    """A batch's merged lists as u2i rows: ids from the maps, codes to source names."""
    user, item, rank = long_rows(users, merged.items)
    valid = merged.items >= 0
    return pa.table({
        "user_id": user_ids.take(pa.array(user)), "item_id": item_ids.take(pa.array(item)),
        "score": pa.array(merged.scores[valid], pa.float32()), "rank": pa.array(rank, pa.int32()),
        "source": source_names.take(pa.array(merged.source[valid].astype(np.int32))),
    })


def i2i_rows(items: np.ndarray, similar: np.ndarray, scores: np.ndarray, item_ids: pa.Array) -> pa.Table:
    key, other, rank = long_rows(items, similar)
    return pa.table({
        "item_id": item_ids.take(pa.array(key)), "similar_item_id": item_ids.take(pa.array(other)),
        "score": pa.array(scores[similar >= 0], pa.float32()), "rank": pa.array(rank, pa.int32()),
    })


def popular_rows(ranking: Ranking, k: int, item_ids: pa.Array) -> pa.Table:
    k = min(k, ranking.items.size)
    return pa.table({
        "item_id": item_ids.take(pa.array(ranking.items[:k])),
        "score": pa.array(ranking.scores[:k], pa.float32()),
        "rank": pa.array(np.arange(1, k + 1, dtype=np.int32)),
    })


@dataclass
class TableWriter:
    """Streams record batches into part files of one staged partition, in row groups. The commit
    seals the partition (numbers the files and writes _SUCCESS), so any writer's files will do."""

    folder: Path
    schema: pa.Schema
    max_rows_per_file: int
    row_group_rows: int
    compression: str = "zstd"
    rows: int = 0
    files: dict[str, int] = field(default_factory=dict)
    _writer: pq.ParquetWriter | None = None
    _current: str = ""
    _file_rows: int = 0
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0
    # one writer thread: encoding and compressing a row group (Arrow releases the GIL) overlaps
    # with computing the next batch; at most one group is in flight, so memory stays bounded
    _pool: ThreadPoolExecutor | None = None
    _inflight: Future | None = None

    def write(self, table: pa.Table) -> None:
        table = table.cast(self.schema) if table.schema != self.schema else table
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._wait()
            data = pa.concat_tables(self._pending)
            self._pending, self._pending_rows = [], 0
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
            self._inflight = self._pool.submit(self._write_rows, data)

    def _wait(self) -> None:
        """Finish the row group in flight; its error (e.g. disk full) is raised here."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    def _flush(self) -> None:
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._pending:
            data = pa.concat_tables(self._pending)
            self._pending, self._pending_rows = [], 0
            self._write_rows(data)

    def _write_rows(self, data: pa.Table) -> None:
        offset = 0
        while offset < data.num_rows:
            if self._writer is None or self._file_rows >= self.max_rows_per_file:
                self._open_next()
            take = min(data.num_rows - offset, self.max_rows_per_file - self._file_rows)
            self._writer.write_table(data.slice(offset, take), row_group_size=self.row_group_rows)
            self._file_rows += take
            self.files[self._current] = self._file_rows
            self.rows += take
            offset += take

    def _open_next(self) -> None:
        self._close_current()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._current = part_name(len(self.files))
        # dictionary pages only for text columns (source, string ids): on ids and scores they cost
        # time and buy nothing next to zstd
        text = [f.name for f in self.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        self._writer = pq.ParquetWriter(self.folder / self._current, self.schema,
                                        compression=None if self.compression == "none" else self.compression,
                                        use_dictionary=text or False)
        self._file_rows = 0
        self.files[self._current] = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            fsync_file(self.folder / self._current)
            self._writer = None

    def close(self) -> int:
        """Flush and close every part file; returns the rows written."""
        self._flush()
        if not self.files:
            self._open_next()  # an empty table still gets one part file, so readers see its schema
        self._close_current()
        return self.rows
