"""Arrow rows of users (as the Spark engine's user DataFrame holds them) to the kernel's UserBatch."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recall.kernel.state import UserBatch


def lists(column: pa.Array | pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column as CSR-like (indptr, values); null lists are empty."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    indptr = np.zeros(len(arr) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return indptr, arr.flatten().to_numpy(zero_copy_only=False).astype(dtype)


def user_batch(rows: pa.RecordBatch | pa.Table, n_items: int, width: int) -> UserBatch:
    """Columns u, seen (sorted item indices) and, when present, factors (`width` floats; a user
    without any is scored as zeros) and recent (most recent items first)."""
    names = rows.schema.names
    users = rows.column("u").to_numpy(zero_copy_only=False).astype(np.int64)
    indptr, indices = lists(rows.column("seen"), np.int64)
    seen = sp.csr_matrix((np.ones(indices.size, np.int8), indices, indptr), shape=(len(users), n_items))
    factors = None
    if "factors" in names:
        ptr, flat = lists(rows.column("factors"), np.float32)
        has = np.diff(ptr) == width
        factors = np.zeros((len(users), width), np.float32)
        factors[has] = flat.reshape(-1, width)
    recent = None
    if "recent" in names:
        ptr, items = lists(rows.column("recent"), np.int64)
        lengths = np.diff(ptr)
        recent = np.full((len(users), max(int(lengths.max(initial=0)), 1)), -1, np.int64)
        row = np.repeat(np.arange(len(users)), lengths)
        recent[row, np.arange(items.size) - ptr[:-1][row]] = items
    return UserBatch(users, seen, factors, recent)
