"""Prepare a window for training: read, validate, encode ids, apply the blocklist. One step,
shared by `recall run` (the local engine), `check`, `tune` and the benchmark."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from loguru import logger

from recall.errors import InputError
from recall.ingest.read import FileRead, read_window
from recall.ingest.validate import BadRows, CleanLog, validate
from recall.ingest.window import Window
from recall.model.matrix import IdMap, Interactions
from recall.spec.sections import JobSpec
from recall.timer import Timer


@dataclass(frozen=True)
class InputStats:
    """What was read and kept: the manifest's `input` section."""

    path: str
    files: list[FileRead]
    rows: int  # rows of the window read
    missing_days: list[str]  # days of the window without data
    bad: BadRows
    users: int
    items: int
    interactions: int  # valid rows
    blocklisted: int

    def to_dict(self) -> dict:
        return {"path": self.path, "files": [vars(f) for f in self.files], "rows": self.rows,
                "users": self.users, "items": self.items, "interactions": self.interactions,
                "blocklisted_items": self.blocklisted, **self.bad.to_dict()}


@dataclass(frozen=True)
class Prepared:
    window: Window
    inter: Interactions
    blocked: np.ndarray  # bool per item of inter.items
    stats: InputStats


def prepare(spec: JobSpec, window: Window, root: Path, timer: Timer | None = None) -> Prepared:
    """The window's valid interactions as matrix coordinates, with the blocklist mask."""
    timer = timer or Timer()
    with timer.step("read"):
        raw = read_window(spec.input, window, root)
    logger.info(f"read {raw.rows} rows from {len(raw.files)} file(s)")
    if raw.missing_days:
        logger.warning(f"no data for {len(raw.missing_days)} day(s) of the window {window.start}..{window.run_date}: "
                       f"{', '.join(raw.missing_days)} (no dt= partition under {root / spec.input.path})")
    with timer.step("validate"):
        clean, bad = validate(raw, spec.input)
    if bad.bad_rows:
        logger.info(f"dropped {bad.bad_rows} bad rows ({bad.fraction:.3%}): "
                    + "; ".join(f"{c['check']} in {c['column']}: {c['rows']}" for c in bad.by_check[:5]))
    with timer.step("matrix"):
        inter = encode(clean)
        blocked = blocked_items(inter.items, load_blocklist(spec, root), spec.source)
    check_catalogue(len(inter.items), blocked, raw.rows, raw.files[0].path)
    logger.info(f"{len(inter.users)} users x {len(inter.items)} items, {clean.rows} interactions, "
                f"{int(blocked.sum())} blocklisted")
    stats = InputStats(spec.input.path, raw.files, raw.rows, raw.missing_days, bad, len(inter.users),
                       len(inter.items), clean.rows, int(blocked.sum()))
    return Prepared(window, inter, blocked, stats)


def encode(log: CleanLog) -> Interactions:
    users, items = IdMap.of(log.user), IdMap.of(log.item)
    return Interactions(users, items, users.index_of(log.user).astype(np.int32),
                        items.index_of(log.item).astype(np.int32), log.ts, log.weight)


def check_catalogue(n_items: int, blocked: np.ndarray, rows: int, first_file: str) -> None:
    if n_items < 2:
        raise InputError(f"only {n_items} distinct item(s) in the window "
                         f"({rows} rows from {first_file}...): nothing to recommend")
    if int((~blocked).sum()) == 0:
        raise InputError(f"all {n_items} items of the window are blocklisted ([filter] blocklist, "
                         "blocklist_path): nothing to recommend")


def load_blocklist(spec: JobSpec, root: Path) -> list:
    ids = list(spec.filter.blocklist)
    if spec.filter.blocklist_path:
        path = root / spec.filter.blocklist_path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read blocklist {path}: {exc.strerror}") from None
        ids += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return ids


def blocked_items(items: IdMap, ids: list, where: str) -> np.ndarray:
    """Mask over the item map of blocklisted ids (ids of the other type are converted when exact)."""
    mask = np.zeros(len(items), dtype=bool)
    if not ids:
        return mask
    if pa.types.is_integer(items.values.type):
        conv = [int(x) for x in ids if isinstance(x, int) or (isinstance(x, str) and x.lstrip("-").isdigit())]
        arr = pa.array(conv, pa.int64())
    else:
        arr = pa.array([str(x) for x in ids], pa.string())
    if len(arr) < len(ids):
        logger.warning(f"{where}: {len(ids) - len(arr)} blocklist ids are not {items.values.type} ids and were ignored")
    pos = items.index_of(arr)
    mask[pos[pos >= 0]] = True
    return mask
