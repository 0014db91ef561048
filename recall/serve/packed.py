"""A keyed table's rows kept compressed: zstd blocks of a few keys' rows each, decompressed per
request. This is what keeps a server's memory near the table's Parquet size instead of 1.4x it.

A block holds the rows of BLOCK_KEYS consecutive keys, column after column: item indices as they
are (read back without a copy), scores with their bytes shuffled (byte 0 of every value, then
byte 1, ...), as Blosc does, so the slowly changing high bytes compress, and source codes. A
blended table has few distinct scores (reciprocal-rank sums), so its scores are stored as
indices into the table's sorted distinct scores when that is smaller: 1.7 bytes a
score instead of 2.7 (measured on the reference run's u2i). Decoding one key costs one block's
decompression: about 10 microseconds for 16 keys of 100 rows.

Files, beside the table's `<stem>.keys.*` and `<stem>.start.npy`:

    <stem>.blocks.bin     the compressed blocks, back to back
    <stem>.blocks.npy     int64 byte offsets of the blocks (n_blocks + 1)
    <stem>.scores.npy     the distinct scores (float32, sorted) when scores are coded, else absent
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from recall.arrays import distinct, mapped

BLOCK_KEYS = 16  # keys a block: as small as the ratio allows (8 keys: +2% bytes; 32: -1%, +1.3 us a lookup)
LEVEL = 3  # zstd level: 9 saves 2% of the bytes and adds 1.1 s to a reference build (a reload)
MAX_CODES = 1 << 24  # distinct scores beyond which coding them does not pay (3-byte codes)


@dataclass(frozen=True)
class Columns:
    """Row dtypes of a packed table: item index, score (or its code) and the optional source."""

    item: np.dtype
    score: np.dtype  # float32, or uint32 codes into the distinct scores
    source: bool

    def widths(self) -> tuple[int, int, int]:
        return self.item.itemsize, self.score.itemsize, 1 if self.source else 0


def shuffled(values: np.ndarray) -> bytes:
    """A column's bytes, byte i of every value together."""
    values = np.ascontiguousarray(values)
    return values.view(np.uint8).reshape(len(values), values.dtype.itemsize).T.tobytes()


def unshuffled(raw: memoryview | bytes, n: int, lo: int, hi: int, dtype: np.dtype) -> np.ndarray:
    """Values lo:hi of a shuffled column of n values."""
    size = dtype.itemsize
    planes = np.frombuffer(raw, np.uint8, n * size).reshape(size, n)
    return np.ascontiguousarray(planes[:, lo:hi].T).view(dtype).reshape(hi - lo)


def distinct_scores(scores: np.ndarray, rows: int, chunk: int = 1 << 22) -> np.ndarray | None:
    """The distinct scores' bit patterns (uint32, sorted: codes keep every bit, -0.0 included),
    or None when coding them would not pay."""
    found = np.zeros(0, np.uint32)
    for lo in range(0, len(scores), chunk):
        found = distinct(np.concatenate([found, distinct(np.asarray(scores[lo:lo + chunk]).view(np.uint32))]))
        if len(found) > MAX_CODES or len(found) * 4 > rows:
            return None
    return found


def pack(out: str | Path, start: np.ndarray, items: np.ndarray, scores: np.ndarray,
         sources: np.ndarray | None) -> dict:
    """Write a keyed table's rows (key i's are start[i]:start[i + 1]) as compressed blocks.
    Returns the layout for the built run's meta.json."""
    codes = distinct_scores(scores, len(scores))
    cols = Columns(items.dtype, np.dtype(np.uint32) if codes is not None else np.dtype(np.float32),
                   sources is not None)
    if codes is not None:
        np.save(f"{out}.scores.npy", codes.view(np.float32))
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    n_keys = len(start) - 1
    offsets = [0]
    with open(f"{out}.blocks.bin", "wb") as fh:
        for first in range(0, n_keys, BLOCK_KEYS):
            lo, hi = int(start[first]), int(start[min(first + BLOCK_KEYS, n_keys)])
            score = np.asarray(scores[lo:hi])
            if codes is not None:
                score = np.searchsorted(codes, score.view(np.uint32)).astype(np.uint32)
            parts = [np.ascontiguousarray(items[lo:hi]).tobytes(), shuffled(score)]
            if sources is not None:
                parts.append(np.ascontiguousarray(sources[lo:hi]).tobytes())
            block = compressor.compress(b"".join(parts))
            fh.write(block)
            offsets.append(offsets[-1] + len(block))
    np.save(f"{out}.blocks.npy", np.array(offsets, np.int64))
    return {"item": cols.item.str, "score": cols.score.str, "source": cols.source,
            "bytes": offsets[-1], "block_keys": BLOCK_KEYS}


class Packed:
    """The rows of a packed table, read key by key, from one thread at a time (a worker's event
    loop): the decompressor is reused, as zstd's contexts are not for concurrent use."""

    def __init__(self, folder: Path, stem: str, start: np.ndarray, layout: dict) -> None:
        self.start = start
        self.cols = Columns(np.dtype(layout["item"]), np.dtype(layout["score"]), bool(layout["source"]))
        self.block_keys = int(layout["block_keys"])
        self.offsets = mapped(folder / f"{stem}.blocks.npy")
        # np.memmap refuses an empty file (a table without rows)
        self.blocks = (np.memmap(folder / f"{stem}.blocks.bin", np.uint8, "r") if layout["bytes"]
                       else np.zeros(0, np.uint8))
        codes = folder / f"{stem}.scores.npy"
        self.codes = mapped(codes) if self.cols.score == np.uint32 else None
        self._zstd = zstandard.ZstdDecompressor()

    def rows(self, at: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Key `at`'s first k rows: item indices, scores (float32) and source codes (or None)."""
        block = at // self.block_keys
        first = block * self.block_keys
        base = int(self.start[first])
        n = int(self.start[min(first + self.block_keys, len(self.start) - 1)]) - base
        lo = int(self.start[at]) - base
        hi = min(int(self.start[at + 1]) - base, lo + k)
        raw = self._zstd.decompress(self.blocks[int(self.offsets[block]):int(self.offsets[block + 1])])
        isz, ssz, _ = self.cols.widths()
        items = np.frombuffer(raw, self.cols.item, hi - lo, lo * isz)
        score = unshuffled(memoryview(raw)[n * isz:], n, lo, hi, self.cols.score)
        if self.codes is not None:
            score = np.asarray(self.codes[score])
        source = None
        if self.cols.source:
            at_source = n * (isz + ssz)
            source = np.frombuffer(raw, np.int8, hi - lo, at_source + lo)
        return items, score, source
