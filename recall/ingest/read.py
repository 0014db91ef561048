"""Read the interaction log for a window of days: Parquet dataset, Parquet file or CSV."""
from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recall.errors import InputError
from recall.ingest.window import Window
from recall.spec.sections import InputSection

DT_RE = re.compile(r"^dt=(.*)$")
INT_TEXT_RE = r"^(0|-?[1-9][0-9]{0,18})$"
NUMBER_TEXT_RE = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
FLOAT_MARK_RE = r"[.eE]"
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
F = TypeVar("F")  # a file as a reader names it (a Path, a Hadoop path string)
DEFAULT_OPTIONAL = {"time": "ts", "weight": "weight", "event": "event"}


@dataclass
class FileRead:
    path: str
    rows: int  # rows of this file inside the window


@dataclass
class RawLog:
    """The window's rows, columns normalised, each row tagged with the file it came from."""

    user: pa.Array
    item: pa.Array
    ts: np.ndarray | None  # int64 UTC microseconds, `ts_bad` marks unparseable ones
    ts_bad: np.ndarray | None
    weight: np.ndarray | None  # float64
    event: pa.Array | None
    file_idx: np.ndarray  # int32 index into `files`
    files: list[FileRead]
    missing_days: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.file_idx)


@dataclass
class Columns:
    """Input column names, with None for an optional column that is absent."""

    user: str
    item: str
    time: str | None
    weight: str | None
    event: str | None

    def present(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def read_window(spec: InputSection, window: Window, root: Path) -> RawLog:
    """Read the rows of `window` from the input named by `spec` (paths relative to `root`)."""
    path = input_path(spec, root)
    files, partitioned, missing = list_files(path, spec, window)
    if not files:
        raise InputError(f"no input files for window {window.start}..{window.run_date} under {path}")
    if partitioned and spec.require_run_date and window.run_date.isoformat() in missing:
        raise InputError(
            f"no partition dt={window.run_date} under {path}: the run date's data has not landed",
            hint="wait for upstream, or set input.require_run_date=false to run without it",
        )
    lo, hi = window.bounds_us()

    def in_window(piece: dict) -> np.ndarray | None:
        if partitioned or piece["ts"] is None:
            return None
        return piece["ts_bad"] | ((piece["ts"] >= lo) & (piece["ts"] < hi))

    log = read_files(files, spec, in_window)
    log.missing_days = [d for d in missing if d != window.run_date.isoformat() or not spec.require_run_date]
    if log.rows == 0:
        raise InputError(
            f"no interactions in window {window.start}..{window.run_date} ({window.timezone}) "
            f"in {path} ({len(files)} file(s) read)"
        )
    return log


def input_path(spec: InputSection, root: Path) -> Path:
    """The input named by `spec` (relative to `root`), refused when it cannot be reached."""
    path = root / spec.path  # an absolute spec.path replaces root
    try:
        found = path.exists()
    except OSError as exc:  # a folder on the way that may not be searched
        raise InputError(f"cannot reach input path {path}: {exc.strerror}",
                         hint="make every folder on the way searchable by this user") from None
    if not found:
        if path.is_symlink():
            raise InputError(f"input path {path} is a symbolic link to {os.readlink(path)}, which does not exist")
        raise missing_input(path, spec, root)
    return path


def read_files(files: list[Path], spec: InputSection, keep: Callable[[dict], np.ndarray | None]) -> RawLog:
    """The rows of `files`, normalised, that `keep` selects (a mask of a file's normalised rows,
    or None for all of them)."""
    pieces = []
    reads = []
    cols = None
    id_types: dict[str, tuple[pa.DataType, str]] = {}
    for i, file in enumerate(files):
        table, names = read_file(file, spec)
        if cols is None:
            cols = resolve_columns(spec, names, file)
        piece = normalise(table, names, cols, spec, file, files[0], id_types)
        mask = keep(piece)
        if mask is not None:
            piece = {k: take(v, mask) for k, v in piece.items()}
        n = len(piece["user"])
        piece["file_idx"] = np.full(n, i, dtype=np.int32)
        reads.append(FileRead(str(file), n))
        pieces.append(piece)
    assert cols is not None
    return RawLog(
        user=concat([p["user"] for p in pieces]),
        item=concat([p["item"] for p in pieces]),
        ts=cat_np(pieces, "ts"),
        ts_bad=cat_np(pieces, "ts_bad"),
        weight=cat_np(pieces, "weight"),
        event=concat([p["event"] for p in pieces]) if cols.event else None,
        file_idx=np.concatenate([p["file_idx"] for p in pieces]),
        files=reads,
    )


def list_files(path: Path, spec: InputSection, window: Window) -> tuple[list[Path], bool, list[str]]:
    """Files to read, whether the input is dt-partitioned, and window days with no partition."""
    wanted = {d.isoformat() for d in window.dates()}
    return pick(*dated_files(path, wanted.__contains__), wanted)


def dated_files(path: Path, listed: Callable[[str], bool]) -> tuple[list[tuple[Path, str | None]], bool]:
    """The input's data files with the day of their dt= partition (None outside any), sorted, and
    whether the input is dt-partitioned (then every file must be inside a partition). Only the
    partitions whose day `listed` accepts are listed; any other stands for its files as its folder."""
    if path.is_file():
        return [(path, None)], False
    dated = walk(path, listed)
    return dated, partitioned(dated)


def choose_files(files: list[tuple[F, tuple[str, ...]]], window: Window) -> tuple[list[F], bool, list[str]]:
    """The window's files among `files` (each with its path parts below the input folder, in
    order), whether they are dt-partitioned, and window days with no partition: for engines that
    list their files on another file system (Spark's, through Hadoop's)."""
    wanted = {d.isoformat() for d in window.dates()}
    dated: list[tuple[F, str | None]] = []
    for file, parts in files:
        days = [m.group(1) for part in parts[:-1] if (m := DT_RE.match(part))]
        day = days[0] if days else None
        if day is not None:
            try:
                dt.date.fromisoformat(day)
            except ValueError:
                folder = str(file).split(f"dt={day}")[0] + f"dt={day}"  # named as the local reader names it
                raise InputError(f"bad partition name dt={day} in {folder}: expected dt=YYYY-MM-DD") from None
        dated.append((file, day))
    return pick(dated, partitioned(dated), wanted)


def partitioned(dated: list[tuple[F, str | None]]) -> bool:
    """Whether files with the day of their dt= partition are a dt-partitioned input (refused when
    some are and some are not)."""
    if not any(day for _, day in dated):
        return False
    strays = [f for f, day in dated if day is None]
    if strays:
        raise InputError(f"file outside any dt= partition in a partitioned input: {strays[0]}")
    return True


def pick(dated: list[tuple[F, str | None]], is_partitioned: bool, wanted: set[str]) -> tuple[list[F], bool, list[str]]:
    """Of files with the day of their dt= partition: those of the window, whether the input is
    partitioned, and the window's days without a partition."""
    if is_partitioned:
        chosen = [f for f, day in dated if day in wanted]
        present = {day for f, day in dated if day in wanted}
        return chosen, True, sorted(wanted - present)
    return [f for f, _ in dated], False, []


def walk(top: Path, listed: Callable[[str], bool]) -> list[tuple[Path, str | None]]:
    """The data files under `top` with the day of their dt= partition (None outside any), sorted;
    a dt= folder whose day `listed` refuses stands for its files, which are not listed.

    Symbolic links are followed (a data-lake snapshot may point older days to other storage),
    files and folders whose names start with '_' or '.' are left out, and so are dt= partitions
    not read (never listed). A folder that cannot be listed, a link that leads
    nowhere and a link loop are refused (exit 3): a day is never skipped in silence.
    """
    found: list[tuple[Path, str | None]] = []

    def visit(folder: Path, day: str | None, ancestors: frozenset) -> None:
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"cannot list input folder {folder}: {exc.strerror}",
                             hint="make it readable by this user (every day of the window must be read), "
                                  "or remove it") from None
        here = ancestors | {(st.st_dev, st.st_ino)}
        for entry in entries:
            if entry.name.startswith(("_", ".")):
                continue
            child = Path(entry.path)
            inner = day
            if day is None and (m := DT_RE.match(entry.name)):
                inner = m.group(1)
                try:
                    dt.date.fromisoformat(inner)
                except ValueError:
                    raise InputError(f"bad partition name dt={inner} in {child}: expected dt=YYYY-MM-DD") from None
                if not listed(inner):
                    found.append((child, inner))  # outside what is read: not listed
                    continue
            try:
                broken = entry.is_symlink() and not child.exists()
                target = child.stat() if not broken and entry.is_dir() else None
                is_file = not broken and target is None and entry.is_file()
            except OSError as exc:
                raise InputError(f"cannot read {child} in the input: {exc.strerror}",
                                 hint="make it readable by this user, or remove it") from None
            if broken:
                raise InputError(f"broken symbolic link in the input: {child} -> {os.readlink(child)}",
                                 hint="restore its target, or remove the link")
            if target is not None:
                if (target.st_dev, target.st_ino) in here:
                    raise InputError(f"symbolic link loop in the input: {child} leads back to a folder above it",
                                     hint="remove the link")
                visit(child, inner, here)
            elif is_file:
                found.append((child, day))

    visit(top, None, frozenset())
    return sorted(found)


def read_file(file: Path, spec: InputSection) -> tuple[pa.Table, list[str]]:
    """One file as an Arrow table of the columns the job reads (CSV ids read as text, typed
    later), and the names of all the file's columns (for messages)."""
    fmt = "csv" if is_text(file, spec) else "parquet"
    if file.stat().st_size == 0:
        raise InputError(f"empty file (0 bytes): {file}")
    try:
        if fmt == "csv":
            return read_csv(file, spec)
        schema = pq.read_schema(file)
        return pq.read_table(file, columns=wanted_columns(spec, schema)), schema.names
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {fmt} file {file}: {first}") from None


def wanted_columns(spec: InputSection, schema: pa.Schema) -> list[str]:
    names = [spec.user_col, spec.item_col]
    for key, col in (("time", spec.time_col), ("weight", spec.weight_col), ("event", spec.event_col)):
        name = DEFAULT_OPTIONAL[key] if col is None else col
        if name:
            names.append(name)
    return [n for n in names if n in schema.names]


def read_csv(file: Path, spec: InputSection) -> tuple[pa.Table, list[str]]:
    id_cols = {spec.user_col: pa.string(), spec.item_col: pa.string()}
    table = pacsv.read_csv(
        file,
        parse_options=pacsv.ParseOptions(delimiter=spec.csv_delimiter),
        convert_options=pacsv.ConvertOptions(column_types=id_cols, strings_can_be_null=True),
    )
    keep = wanted_columns(spec, table.schema)
    return table.select(keep), table.column_names


def resolve_columns(spec: InputSection, names: list[str], file: Path) -> Columns:
    for key, col in (("user", spec.user_col), ("item", spec.item_col)):
        if col not in names:
            raise missing_column(col, key, file, names)
    chosen = {}
    for key, col in (("time", spec.time_col), ("weight", spec.weight_col), ("event", spec.event_col)):
        if col is None:
            chosen[key] = DEFAULT_OPTIONAL[key] if DEFAULT_OPTIONAL[key] in names else None
        elif col == "":
            chosen[key] = None
        elif col not in names:
            raise missing_column(col, key, file, names)
        else:
            chosen[key] = col
    if chosen["event"] and not spec.event_weights:
        raise InputError(
            f"column {chosen['event']!r} in {file} holds events but input.event_weights is empty",
            hint="map each event to a weight in [input] event_weights, or set input.event_col = \"\"",
        )
    return Columns(spec.user_col, spec.item_col, chosen["time"], chosen["weight"], chosen["event"])


def missing_input(path: Path | str, spec: InputSection, root: Path) -> InputError:
    """The input path does not exist: say where a relative path was taken from, and the fix."""
    relative = "" if Path(spec.path).is_absolute() or "://" in spec.path else (
        f"[input] path {spec.path!r} is taken from the project folder {root}; ")
    return InputError(f"input path does not exist: {path}",
                      hint=relative + "fix [input] path, or name the project folder with --root DIR or RECALL_ROOT")


def missing_column(col: str, key: str, file: Path, names: list[str], first: Path | None = None) -> InputError:
    """A column the spec names is not in `file`: say which key names it and what the file has."""
    return InputError(
        f"missing column {col!r} (input.{key}_col) in {file}"
        + (f", which {first} has" if first else "")
        + f"; the file's columns: {', '.join(names) or 'none'}",
        hint=f"set input.{key}_col to the file's {key} column (in the spec's [input], or --set input.{key}_col=NAME)"
        + ("" if key in ("user", "item") else ", or to \"\" to read without one"))


def normalise(table: pa.Table, names: list[str], cols: Columns, spec: InputSection, file: Path, first: Path,
              id_types: dict[str, tuple[pa.DataType, str]]) -> dict:
    """Canonical columns of one file: ids int64 or string, time in UTC us, weight float64."""
    for key, name in cols.present().items():
        if name not in table.schema.names:
            raise missing_column(name, key, file, names, first)
    out: dict = {}
    csv = is_text(file, spec)
    for key, name in (("user", cols.user), ("item", cols.item)):
        arr = id_array(table.column(name), name, file, csv)
        seen = id_types.setdefault(key, (arr.type, str(file)))
        if seen[0] != arr.type:
            raise InputError(
                f"id type changes between files: column {name!r} is {seen[0]} in {seen[1]} but {arr.type} in {file}"
            )
        out[key] = arr
    if cols.time:
        ts, bad = time_array(table.column(cols.time), spec.time_unit, cols.time, file)
        out["ts"], out["ts_bad"] = ts, bad
    else:
        out["ts"], out["ts_bad"] = None, None
    if cols.weight:
        col = table.column(cols.weight)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)
                or pa.types.is_null(col.type)):
            raise InputError(f"weight column {cols.weight!r} in {file} is {col.type}, not a number")
        out["weight"] = col.cast(pa.float64()).to_numpy().astype(np.float64, copy=False)
    else:
        out["weight"] = None
    if cols.event:
        col = table.column(cols.event)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        out["event"] = col.cast(pa.string()).combine_chunks()  # also right for 0 chunks
    else:
        out["event"] = None
    return out


def id_array(col: pa.ChunkedArray, name: str, file: Path, csv: bool) -> pa.Array:
    """Ids as int64 or string. Float ids are refused: above 2^53 they silently lose precision."""
    arr = col.combine_chunks()
    if pa.types.is_null(arr.type):  # a CSV column with no value at all: every id is null
        arr = arr.cast(pa.string())
    kind = arr.type
    if pa.types.is_dictionary(kind):
        arr = arr.cast(kind.value_type)
        kind = arr.type
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        raise InputError(
            f"floating-point ids refused: column {name!r} in {file} is {kind} "
            "(ids above 2^53 lose precision); write ids as integers or strings"
        )
    if pa.types.is_integer(kind):
        try:
            return arr.cast(pa.int64())
        except pa.ArrowInvalid:
            raise InputError(f"id column {name!r} in {file} has values beyond int64") from None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        arr = arr.cast(pa.string())
        return text_ids(arr, name, file) if csv else arr
    raise InputError(f"id column {name!r} in {file} is {kind}; ids must be integers or strings")


def is_text(file: Path, spec: InputSection) -> bool:
    """Whether `file` is read as CSV: by the spec's format, else by its suffix."""
    if spec.format != "auto":
        return spec.format == "csv"
    return Path(str(file)).suffix.lower() in TEXT_SUFFIXES


def text_ids(arr: pa.Array, name: str, file: Path) -> pa.Array:
    """CSV ids: canonical integers become int64; leading zeros or letters keep them text."""
    valid = arr.drop_null()
    if len(valid) == 0:
        return arr
    if pc.all(pc.match_substring_regex(valid, INT_TEXT_RE)).as_py():
        try:
            return arr.cast(pa.int64())
        except pa.ArrowInvalid:
            return arr
    numeric = pc.all(pc.match_substring_regex(valid, NUMBER_TEXT_RE)).as_py()
    decimal = pc.match_substring_regex(valid, FLOAT_MARK_RE)
    if numeric and pc.any(decimal).as_py():
        example = valid.filter(decimal)[0].as_py()
        raise InputError(
            f"floating-point ids refused: column {name!r} in {file} holds numbers with a decimal point "
            f"or exponent (e.g. {example!r}); write ids as integers or strings"
        )
    return arr


def time_array(col: pa.ChunkedArray, unit: str, name: str, file: Path) -> tuple[np.ndarray, np.ndarray]:
    """UTC microseconds and a mask of unparseable (or null) times. Naive times are UTC."""
    arr = col.combine_chunks()
    kind = arr.type
    if pa.types.is_null(kind):  # a CSV column with no value at all: every time is missing
        return np.zeros(len(arr), dtype=np.int64), np.ones(len(arr), dtype=bool)
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}[unit]
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        arr = arr.cast(pa.timestamp("us", tz=getattr(kind, "tz", None) or "UTC") if pa.types.is_timestamp(kind)
                       else pa.timestamp("us"))
        values = arr.cast(pa.int64())
        bad = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        return np.asarray(values.fill_null(0).to_numpy(), dtype=np.int64), bad
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        raw = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        scaled = raw * scale
        bad = ~np.isfinite(scaled) | (np.abs(scaled) > 9.2e18)
        return np.where(bad, 0, scaled).astype(np.int64), bad
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        parsed = pd.to_datetime(pd.Series(arr.to_numpy(zero_copy_only=False)), format="ISO8601",
                                errors="coerce", utc=True)
        bad = parsed.isna().to_numpy()
        micros = parsed.fillna(pd.Timestamp(0, tz="UTC")).dt.as_unit("us").astype("int64").to_numpy()
        return micros, bad
    raise InputError(f"time column {name!r} in {file} is {kind}; expected a timestamp, a number or text")


def take(value, mask: np.ndarray):
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value[mask]
    return value.filter(pa.array(mask))


def concat(arrays: list) -> pa.Array:
    arrays = [a for a in arrays if a is not None]
    return pa.concat_arrays(arrays) if arrays else None


def cat_np(pieces: list[dict], key: str) -> np.ndarray | None:
    parts = [p[key] for p in pieces]
    if any(p is None for p in parts):
        return None
    return np.concatenate(parts)
