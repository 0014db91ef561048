"""Row checks on the window's log: count bad rows per file, column and check; drop or refuse."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recall.errors import InputError
from recall.ingest.read import RawLog
from recall.spec.sections import InputSection


@dataclass
class CleanLog:
    """Valid rows: ids as read, time in UTC microseconds (or None), one weight per row."""

    user: pa.Array
    item: pa.Array
    ts: np.ndarray | None
    weight: np.ndarray  # float64: the row's weight times its event's weight

    @property
    def rows(self) -> int:
        return len(self.weight)

    def take(self, mask: np.ndarray) -> CleanLog:
        sel = pa.array(mask)
        return CleanLog(self.user.filter(sel), self.item.filter(sel),
                        None if self.ts is None else self.ts[mask], self.weight[mask])


@dataclass
class BadRows:
    total_rows: int
    bad_rows: int = 0
    duplicate_rows: int = 0
    by_check: list[dict] = field(default_factory=list)  # {file, column, check, rows}

    @property
    def fraction(self) -> float:
        return self.bad_rows / self.total_rows if self.total_rows else 0.0

    def to_dict(self) -> dict:
        return {"rows_in_window": self.total_rows, "bad_rows": self.bad_rows,
                "bad_fraction": round(self.fraction, 6), "duplicate_rows": self.duplicate_rows,
                "checks": self.by_check}


def validate(log: RawLog, spec: InputSection) -> tuple[CleanLog, BadRows]:
    """Drop bad rows below `max_bad_fraction`; above it raise InputError naming the worst offender."""
    n = log.rows
    checks: list[tuple[str, str, np.ndarray]] = []
    for name, arr in ((spec.user_col, log.user), (spec.item_col, log.item)):
        checks.append((name, "null id", is_null(arr)))
        if pa.types.is_string(arr.type):
            checks.append((name, "empty id", np.asarray(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""),
                                                                     False).to_numpy(zero_copy_only=False))))
    if log.ts is not None:
        checks.append((spec.time_col or "ts", "unparseable or null time", log.ts_bad))
    weight = np.ones(n, dtype=np.float64)
    if log.weight is not None:
        w = log.weight
        col = spec.weight_col or "weight"
        finite = np.isfinite(w)
        checks.append((col, "null or non-finite weight", ~finite))
        checks.append((col, "negative weight", finite & (w < 0)))
        checks.append((col, "zero weight", w == 0))
        checks.append((col, f"weight above max_weight {spec.max_weight:g}", finite & (w > spec.max_weight)))
        weight = np.where(finite, w, 0.0)
    if log.event is not None:
        col = spec.event_col or "event"
        known = pa.array(sorted(spec.event_weights), pa.string())
        pos = pc.index_in(log.event, value_set=known)
        missing = is_null(pos)
        checks.append((col, f"unknown event (known: {', '.join(sorted(spec.event_weights))})", missing))
        table = np.array([spec.event_weights[e] for e in known.to_pylist()], dtype=np.float64)
        codes = np.asarray(pos.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        weight = weight * table[codes]
    bad = np.zeros(n, dtype=bool)
    report = BadRows(total_rows=n)
    for column, check, mask in checks:
        count_check(report, log, column, check, mask)
        bad |= mask
    if spec.duplicates == "drop" and log.ts is not None:
        dup = duplicate_rows(log, ~bad)
        report.duplicate_rows = int(dup.sum())
        count_check(report, log, f"{spec.user_col},{spec.item_col},{spec.time_col or 'ts'}",
                    "duplicate row (same user, item, time, event, weight)", dup)
        bad |= dup
    report.bad_rows = int(bad.sum())
    report.by_check.sort(key=lambda c: -c["rows"])
    refuse_if_too_bad(report, spec)
    good = ~bad
    clean = CleanLog(log.user, log.item, log.ts, weight).take(good) if report.bad_rows else \
        CleanLog(log.user, log.item, log.ts, weight)
    return clean, report


def refuse_if_too_bad(report: BadRows, spec: InputSection) -> None:
    """Above `max_bad_fraction`: InputError naming the worst file, column and check (by_check sorted)."""
    if report.bad_rows and report.fraction > spec.max_bad_fraction:
        worst = report.by_check[0]
        raise InputError(
            f"input invalid: {report.bad_rows} of {report.total_rows} rows in the window are bad "
            f"({report.fraction:.2%} > input.max_bad_fraction {spec.max_bad_fraction:g}); "
            f"worst: file {worst['file']} column {worst['column']!r}: {worst['check']}, {worst['rows']} rows"
            + (f" (+{len(report.by_check) - 1} more file/check pairs)" if len(report.by_check) > 1 else ""),
        )


def is_null(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def count_check(report: BadRows, log: RawLog, column: str, check: str, mask: np.ndarray) -> None:
    if not mask.any():
        return
    per_file = np.bincount(log.file_idx[mask], minlength=len(log.files))
    for i in np.flatnonzero(per_file):
        report.by_check.append({"file": log.files[i].path, "column": column, "check": check,
                                "rows": int(per_file[i])})


def duplicate_rows(log: RawLog, candidates: np.ndarray) -> np.ndarray:
    """Exact repeats of an earlier row (ingestion replays); repeated events at other times are kept."""
    dup = np.zeros(log.rows, dtype=bool)
    # only a row whose time another row shares can repeat one: one cheap hash pass narrows the rest
    shared = pd.Series(log.ts).duplicated(keep=False).to_numpy()
    rows = np.flatnonzero(shared)
    if rows.size == 0:
        return dup
    sel = pa.array(shared)
    frame = pd.DataFrame({
        "u": codes_of(log.user.filter(sel)), "i": codes_of(log.item.filter(sel)), "t": log.ts[rows],
        "w": log.weight[rows] if log.weight is not None else 0.0,
        "e": codes_of(log.event.filter(sel)) if log.event is not None else 0,
    })
    dup[rows] = frame.duplicated(keep="first").to_numpy()
    return dup & candidates


def codes_of(arr: pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(arr)
    return np.asarray(enc.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
