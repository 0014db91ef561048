"""One built run opened read-only (recall.serve.build): the lookups a request makes.

Arrays are memory-mapped, so every worker shares one copy through the page cache and opening a
run costs milliseconds. A snapshot never changes: a request takes the job's current snapshot
once and answers from it alone, so a reload (a new snapshot swapped in) can never mix two runs.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from recall.kernel import compiled
from recall.kernel.blend import Blend
from recall.kernel.foldin import FoldIn, FoldSettings
from recall.kernel.state import ItemIndex, ItemSide, Neighbours, Ranking
from recall.sources.ease import Ease

PARTS = {"Ranking": Ranking, "Neighbours": Neighbours, "ItemIndex": ItemIndex, "Ease": Ease}

BUILT = "meta.json"  # a built run's description, written last: a folder with it is complete


def mapped(path: Path) -> np.ndarray:
    """A read-only memory map of a .npy file, as a plain ndarray view (slices stay cheap)."""
    return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)


def mapped_ids(path: Path) -> pa.Array:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()["id"].combine_chunks()


class Keys:
    """Sorted ids, searched by value: integers with numpy, text by bisection over Arrow's buffers."""

    def __init__(self, ids: np.ndarray | pa.Array) -> None:
        if isinstance(ids, np.ndarray):
            self.ints: np.ndarray | None = ids
            self.text: TextKeys | None = None
        elif pa.types.is_integer(ids.type):
            self.ints, self.text = ids.to_numpy(zero_copy_only=False).astype(np.int64), None
        else:
            self.ints, self.text = None, TextKeys(ids.cast(pa.large_string()))
        self.size = len(ids)

    @classmethod
    def open(cls, folder: Path, stem: str) -> Keys:
        ints = folder / f"{stem}.keys.npy"
        return cls(mapped(ints) if ints.exists() else mapped_ids(folder / f"{stem}.keys.arrow"))

    @property
    def integer(self) -> bool:
        return self.ints is not None

    def find(self, key: int | str) -> int:
        """The key's position, or -1."""
        if self.ints is not None:
            at = int(np.searchsorted(self.ints, key))
            return at if at < self.size and self.ints[at] == key else -1
        return self.text.find(key)


class TextKeys:
    """Sorted large_string ids searched without making a Python object per id."""

    def __init__(self, ids: pa.Array) -> None:
        _, offsets, data = ids.buffers()
        self.offsets = np.frombuffer(offsets, np.int64, len(ids) + 1, ids.offset * 8)
        self.data = memoryview(data) if data is not None else memoryview(b"")
        self.n = len(ids)

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
    """A keyed table served by position: key i's rows are start[i]:start[i + 1], in rank order."""

    keys: Keys
    start: np.ndarray
    item: np.ndarray  # item index (uint16 or int32)
    score: np.ndarray
    source: np.ndarray | None  # int8 source code (u2i)
    width: int  # the longest list: the most a request may ask for

    @classmethod
    def open(cls, folder: Path, stem: str, width: int) -> Lists:
        source = folder / f"{stem}.source.npy"
        return cls(Keys.open(folder, stem), mapped(folder / f"{stem}.start.npy"), mapped(folder / f"{stem}.item.npy"),
                   mapped(folder / f"{stem}.score.npy"), mapped(source) if source.exists() else None, width)

    def span(self, key: int | str, k: int) -> tuple[int, int] | None:
        at = self.keys.find(key)
        if at < 0:
            return None
        lo = int(self.start[at])
        return lo, min(int(self.start[at + 1]), lo + k)


@dataclass(frozen=True)
class Snapshot:
    """A job's run as the server answers from it."""

    job: str
    date: str
    run_id: str
    folder: Path
    item_ids: pa.Array
    item_values: list  # Python ids by item index (what JSON answers carry)
    items: Keys  # item id -> item index (the item side's ids are sorted)
    u2i: Lists
    i2i: Lists | None
    popular_item: np.ndarray
    popular_score: np.ndarray
    side: ItemSide
    blend: Blend
    k: int  # the u2i table's k
    recent_items: int
    fold: FoldIn | None
    integer_users: bool
    integer_items: bool
    fresh: Lists | None = None  # the nearline overlay of the run: refreshed users' lists (recall.store.overlay)
    fresh_run_id: str = ""

    @property
    def u2i_width(self) -> int:
        """The longest u2i list of the run and its overlay: the most a request may ask for."""
        return max(self.u2i.width, self.fresh.width if self.fresh is not None else 0)

    def u2i_span(self, user: int | str, k: int) -> tuple[Lists, int, int] | None:
        """Where a user's first k u2i rows are: in the overlay when it holds the user, else in
        the nightly table; None for a user neither knows."""
        for lists in (self.fresh, self.u2i):
            if lists is not None and (span := lists.span(user, k)) is not None:
                return lists, *span
        return None

    def with_fresh(self, folder: Path | None) -> Snapshot:
        """The same run with the overlay built in `folder` (recall.serve.build.build_fresh), or
        without any overlay (None)."""
        if folder is None:
            return dataclasses.replace(self, fresh=None, fresh_run_id="")
        meta = json.loads((folder / BUILT).read_text(encoding="utf-8"))
        return dataclasses.replace(self, fresh=Lists.open(folder, "u2i", meta["table"]["width"]),
                                   fresh_run_id=meta["run_id"])

    @classmethod
    def open(cls, folder: Path) -> Snapshot:
        meta = json.loads((folder / BUILT).read_text(encoding="utf-8"))
        settings = meta["settings"]
        item_ids = mapped_ids(folder / "item_ids.arrow")
        side = open_side(folder, meta["side"])
        model = settings.get("model")
        fold = None
        if model and side.factors is not None:
            weight_sum = mapped(folder / "side.weight_sum.npy") if (folder / "side.weight_sum.npy").exists() else None
            fold = FoldIn.of(side.factors, FoldSettings(**model), weight_sum)
        tables = meta["tables"]
        u2i = Lists.open(folder, "u2i", tables["u2i"]["width"])
        return cls(
            job=meta["job"], date=meta["date"], run_id=meta["run_id"], folder=folder, item_ids=item_ids,
            item_values=item_ids.to_pylist(), items=Keys(item_ids), u2i=u2i,
            i2i=Lists.open(folder, "i2i", tables["i2i"]["width"]) if "i2i" in tables else None,
            popular_item=mapped(folder / "popular.item.npy"), popular_score=mapped(folder / "popular.score.npy"),
            side=side, blend=Blend.from_dict(settings["blend"]), k=int(settings["u2i"]["k"]),
            recent_items=int(settings["recent_items"]), fold=fold,
            integer_users=u2i.keys.integer, integer_items=pa.types.is_integer(item_ids.type))


def open_side(folder: Path, layout: dict) -> ItemSide:
    """The item side from its arrays (recall.serve.build.save_side)."""
    factors = mapped(folder / "side.factors.npy") if layout["factors"] else None
    parts = {}
    for name, entry in layout["parts"].items():
        if entry.get("factors_order"):  # recall.serve.build.factors_order
            parts[name] = ItemIndex(np.arange(len(factors), dtype=np.int64), factors,
                                    bounds=compiled.norm_bounds(factors))
            continue
        cls = PARTS[entry["kind"]]
        arrays = {f: mapped(folder / f"side.{name}.{f}.npy") for f in cls.__dataclass_fields__
                  if (folder / f"side.{name}.{f}.npy").exists()}
        parts[name] = cls(**arrays, **entry["scalars"])
    popular = Ranking(mapped(folder / "side.popular.items.npy"), mapped(folder / "side.popular.scores.npy"))
    return ItemSide(mapped(folder / "side.allowed.npy"), popular, parts, factors)
