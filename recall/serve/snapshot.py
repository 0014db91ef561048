"""One built run opened read-only (recall.serve.build): the lookups a request makes.

Arrays are memory-mapped, so every worker shares one copy through the page cache and opening a
run costs milliseconds; table rows stay compressed (recall.serve.packed) and are decoded per
request. A snapshot never changes: a request takes the job's current snapshot once and answers
from it alone, so a reload (a new snapshot swapped in) can never mix two runs.

Lookups need numpy and zstd only: the item side and the fold-in kernel (numba, scipy) are loaded
on a snapshot's first fold-in (recall.serve.model), so a server that only looks rows up stays
small.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recall.arrays import mapped
from recall.serve.model import Model
from recall.serve.packed import Packed

BUILT = "meta.json"  # a built run's description, written last: a folder with it is complete


class Keys:
    """Sorted ids, searched by value: integers with numpy, text by bisection over UTF-8 bytes.

    Stored as `<stem>.npy` (int64) or, for text, `<stem>.offsets.npy` (int64, n + 1) and
    `<stem>.utf8.npy` (uint8) (recall.serve.build.write_ids)."""

    def __init__(self, ints: np.ndarray | None, text: TextKeys | None) -> None:
        self.ints, self.text = ints, text
        self.size = len(ints) if ints is not None else len(text)

    @classmethod
    def open(cls, stem: Path) -> Keys:
        ints = stem.with_name(stem.name + ".npy")
        if ints.exists():
            return cls(mapped(ints), None)
        return cls(None, TextKeys(mapped(stem.with_name(stem.name + ".offsets.npy")),
                                  mapped(stem.with_name(stem.name + ".utf8.npy"))))

    @property
    def integer(self) -> bool:
        return self.ints is not None

    def find(self, key: int | str) -> int:
        """The key's position, or -1."""
        if self.ints is not None:
            at = int(np.searchsorted(self.ints, key))
            return at if at < self.size and self.ints[at] == key else -1
        return self.text.find(key)

    def values(self) -> list:
        """Every id as a Python value (what JSON answers carry)."""
        if self.ints is not None:
            return self.ints.tolist()
        return [self.text[i].decode("utf-8") for i in range(len(self.text))]


class TextKeys:
    """Sorted text ids searched without making a Python object per id."""

    def __init__(self, offsets: np.ndarray, data: np.ndarray) -> None:
        self.offsets = offsets
        self.data = memoryview(data) if len(data) else memoryview(b"")
        self.n = len(offsets) - 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:
        return bytes(self.data[self.offsets[i]:self.offsets[i + 1]])

    def find(self, key: str) -> int:
        want = key.encode("utf-8")
        at = bisect.bisect_left(self, want)
        return at if at < self.n and self[at] == want else -1


@dataclass(frozen=True)
class Lists:
    """A keyed table served by position: key i's rows, in rank order, decoded from its block."""

    keys: Keys
    rows: Packed
    width: int  # the longest list: the most a request may ask for

    @classmethod
    def open(cls, folder: Path, stem: str, layout: dict) -> Lists:
        start = mapped(folder / f"{stem}.start.npy")
        return cls(Keys.open(folder / f"{stem}.keys"), Packed(folder, stem, start, layout["packed"]), layout["width"])

    def find(self, key: int | str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """The key's first k rows (item indices, scores, source codes), or None for an unknown key."""
        at = self.keys.find(key)
        return None if at < 0 else self.rows.rows(at, k)


@dataclass(frozen=True)
class Snapshot:
    """A job's run as the server answers from it."""

    job: str
    date: str
    run_id: str
    folder: Path
    item_values: list  # Python ids by item index (what JSON answers carry)
    items: Keys  # item id -> item index (the item side's ids are sorted)
    u2i: Lists
    i2i: Lists | None
    popular_item: np.ndarray
    popular_score: np.ndarray
    source_names: tuple[str, ...]  # by source code, as the run's version numbered them
    k: int  # the u2i table's k
    model: Model  # the item side and fold-in, loaded on the first fold-in
    integer_users: bool
    integer_items: bool
    fresh: Lists | None = None  # the nearline overlay of the run: refreshed users' lists (recall.store.overlay)
    fresh_run_id: str = ""

    @property
    def u2i_width(self) -> int:
        """The longest u2i list of the run and its overlay: the most a request may ask for."""
        return max(self.u2i.width, self.fresh.width if self.fresh is not None else 0)

    def u2i_rows(self, user: int | str, k: int) -> tuple[bool, tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """A user's first k u2i rows, from the overlay when it holds the user (True), else from
        the nightly table (False); None for a user neither knows."""
        for fresh, lists in ((True, self.fresh), (False, self.u2i)):
            if lists is not None and (rows := lists.find(user, k)) is not None:
                return fresh, rows
        return None

    def with_fresh(self, folder: Path | None) -> Snapshot:
        """The same run with the overlay built in `folder` (recall.serve.build.build_fresh), or
        without any overlay (None)."""
        if folder is None:
            return dataclasses.replace(self, fresh=None, fresh_run_id="")
        meta = json.loads((folder / BUILT).read_text(encoding="utf-8"))
        return dataclasses.replace(self, fresh=Lists.open(folder, "u2i", meta["table"]), fresh_run_id=meta["run_id"])

    @classmethod
    def open(cls, folder: Path) -> Snapshot:
        meta = json.loads((folder / BUILT).read_text(encoding="utf-8"))
        settings, tables = meta["settings"], meta["tables"]
        items = Keys.open(folder / "item_ids")
        u2i = Lists.open(folder, "u2i", tables["u2i"])
        return cls(
            job=meta["job"], date=meta["date"], run_id=meta["run_id"], folder=folder,
            item_values=items.values(), items=items, u2i=u2i,
            i2i=Lists.open(folder, "i2i", tables["i2i"]) if "i2i" in tables else None,
            popular_item=mapped(folder / "popular.item.npy"), popular_score=mapped(folder / "popular.score.npy"),
            source_names=tuple(meta["sources"]), k=int(settings["u2i"]["k"]), model=Model(folder, meta),
            integer_users=u2i.keys.integer, integer_items=items.integer)
