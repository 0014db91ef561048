"""Job spec: TOML sections as typed dataclasses, strict validation, --set overrides."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
import types
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recall.errors import SpecError

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Id = int | str


@dataclass
class JobSection:
    name: str = ""  # default: the spec file's stem
    schedule: str = ""  # cron expression; empty means not scheduled
    timezone: str = "UTC"
    lookback_days: int = 28


@dataclass
class InputSection:
    path: str = ""  # required
    format: Literal["auto", "parquet", "csv"] = "auto"
    user_col: str = "user_id"
    item_col: str = "item_id"
    # None: use the default-named column when present; "": no such column.
    time_col: str | None = None
    weight_col: str | None = None
    event_col: str | None = None
    event_weights: dict[str, float] = field(default_factory=dict)
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    csv_delimiter: str = ","
    max_bad_fraction: float = 0.01
    max_weight: float = 1e9
    duplicates: Literal["drop", "keep"] = "drop"
    require_run_date: bool = True


@dataclass
class ModelSection:
    factors: int = 64
    regularization: float = 0.1
    alpha: float = 5.0
    iterations: int = 15
    random_state: int = 42
    threads: int = 0  # 0: all cores
    weighting: Literal["none", "log", "bm25"] = "log"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    half_life_days: float = 0.0  # time decay of interaction weights; 0 turns it off


@dataclass
class U2ISection:
    k: int = 100
    sources: list[str] = field(default_factory=lambda: ["als", "item_based", "recent_popular"])
    blend: Literal["ordered", "quota", "weighted"] = "weighted"
    quotas: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    search: Literal["exact", "approx", "auto"] = "auto"
    approx_min_items: int = 200_000  # `auto` goes approximate at this catalogue size
    nlist: int = 0  # IVF lists; 0 picks about 2 * sqrt(items)
    nprobe: int = 0  # IVF lists probed; 0 picks enough for recall ~0.95
    approx_check_users: int = 2000  # users sampled to measure approx recall
    approx_target_recall: float = 0.95  # with nprobe = 0, probe more cells until the sample gets it
    batch_size: int = 8192


@dataclass
class I2ISection:
    k: int = 50  # 0 turns the i2i table off
    batch_size: int = 8192


@dataclass
class PopularSection:
    k: int = 100
    days: int = 0  # popularity over the last `days` of the window; 0: whole window


@dataclass
class RecentPopularSection:
    days: int = 7
    half_life_days: float = 2.0


@dataclass
class ItemBasedSection:
    recent_items: int = 5  # a user's most recent items whose neighbours become candidates
    neighbours: int = 50
    # item-item similarity: co-occurrence (implicit's BM25 or cosine item-kNN), or the cosine of
    # the ALS item factors (the i2i table's neighbours)
    similarity: Literal["bm25", "cosine", "als"] = "bm25"


@dataclass
class RecallSection:
    u2i: U2ISection = field(default_factory=U2ISection)
    i2i: I2ISection = field(default_factory=I2ISection)
    popular: PopularSection = field(default_factory=PopularSection)
    recent_popular: RecentPopularSection = field(default_factory=RecentPopularSection)
    item_based: ItemBasedSection = field(default_factory=ItemBasedSection)


@dataclass
class FilterSection:
    blocklist: list[Id] = field(default_factory=list)
    blocklist_path: str = ""  # a text file, one item id a line


@dataclass
class OutputSection:
    path: str = "data/recall"
    keep_days: int = 14
    max_rows_per_file: int = 10_000_000
    row_group_rows: int = 1_000_000
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


@dataclass
class EvaluateSection:
    holdout_days: int = 1  # 0 turns the holdout evaluation off
    # temporal: the last holdout_days of the window; user_fraction: each user's last
    # holdout_fraction of interactions (by time, else log order); user_random: a seeded random
    # fraction of each user's interactions (logs whose order means nothing); auto: temporal
    # when the log has time, else user_fraction
    split: Literal["auto", "temporal", "user_fraction", "user_random"] = "auto"
    holdout_fraction: float = 0.2
    k: int = 100
    max_users: int = 20_000  # holdout users scored (a seeded sample above this)


@dataclass
class GateSection:
    min_recall: float = 0.0
    max_recall_drop: float = 0.5  # relative to the previous published run
    min_coverage: float = 0.0
    min_rows: int = 1


@dataclass
class LogSection:
    dir: str = "logs"
    rotation: str = "50 MB"
    retention: str | int = "30 days"  # a period, or how many rotated files to keep
    compression: str = "gz"
    level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"


@dataclass
class JobSpec:
    job: JobSection = field(default_factory=JobSection)
    input: InputSection = field(default_factory=InputSection)
    model: ModelSection = field(default_factory=ModelSection)
    recall: RecallSection = field(default_factory=RecallSection)
    filter: FilterSection = field(default_factory=FilterSection)
    output: OutputSection = field(default_factory=OutputSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    gate: GateSection = field(default_factory=GateSection)
    log: LogSection = field(default_factory=LogSection)
    source: str = field(default="", compare=False)  # the file it came from

    @property
    def name(self) -> str:
        return self.job.name

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    def spec_hash(self) -> str:
        canon = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


U2I_SOURCES = ("als", "popular", "recent_popular", "item_based")  # the order gives the codes in memory


# --- loading -----------------------------------------------------------------


def resolve_job_path(job: str, root: Path) -> Path:
    """JOB is a path to a TOML file or the name of a file in jobs/."""
    candidate = Path(job)
    if candidate.suffix == ".toml" or "/" in job:
        path = candidate if candidate.is_absolute() else (Path.cwd() / candidate)
        if not path.exists() and not candidate.is_absolute():
            path = root / candidate
    else:
        path = root / "jobs" / f"{job}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "jobs").glob("*.toml"))
        raise SpecError(f"job spec not found: {path} (jobs in {root / 'jobs'}: {', '.join(known) or 'none'})")
    return path


def load_spec(path: Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec; raises SpecError naming the bad key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read job spec: {exc}") from None
    for item in overrides or []:
        apply_override(raw, item)
    spec = build_section(JobSpec, raw, where="", source=str(path))
    spec.source = str(path)
    if not spec.job.name:
        spec.job.name = path.stem
    check_spec(spec, str(path))
    return spec


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value); value read as TOML, else a string."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise SpecError(f"--set {item!r}: the key must name a section and a key, e.g. model.factors=64")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return parts, value


def apply_override(raw: dict[str, Any], item: str) -> None:
    parts, value = parse_override(item)
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {item!r}: {part} is not a section")
    node[parts[-1]] = value


def build_section(cls: type, raw: Any, where: str, source: str) -> Any:
    """Build dataclass `cls` from a TOML table, refusing unknown keys and wrong types."""
    label = f"[{where}]" if where else "the top level"
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {label} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        tip = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(fields)})"
        raise SpecError(f"{source}: unknown key {key!r} in {label}{tip}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind):
            values[name] = build_section(kind, value, path, source)
            continue
        if not type_ok(value, kind):
            raise SpecError(
                f"{source}: [{where}] {name} must be {describe(kind)}, got {type(value).__name__} {value!r}"
                if where
                else f"{source}: {name} must be a table, got {type(value).__name__}"
            )
        values[name] = float(value) if kind is float else value
    return cls(**values)


def type_ok(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in args if a is not type(None))
    if origin is list:
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(type_ok(v, args[1]) for v in value.values())
    raise TypeError(f"unsupported spec type {kind}")


def describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is list:
        return f"a list of {describe(args[0])}"
    if origin is dict:
        return f"a table of {describe(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


# --- semantic checks ---------------------------------------------------------


def check_spec(spec: JobSpec, source: str) -> None:
    """Checks a single key's type cannot express; each names the key."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise SpecError(f"{source}: {key} {msg}")

    need(bool(JOB_NAME_RE.match(spec.job.name)), "[job] name",
         f"{spec.job.name!r} may hold only letters, digits, '_' and '-' (at most 64)")
    try:
        zoneinfo.ZoneInfo(spec.job.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        need(False, "[job] timezone", f"{spec.job.timezone!r} is not a known IANA time zone")
    need(spec.job.lookback_days >= 1, "[job] lookback_days", "must be at least 1")
    if spec.job.schedule:
        from recall.schedule import check_expression

        check_expression(spec.job.schedule, f"{source}: [job] schedule")
    need(bool(spec.input.path), "[input] path", "is required")
    need(0.0 <= spec.input.max_bad_fraction <= 1.0, "[input] max_bad_fraction", "must be within 0..1")
    need(spec.input.max_weight > 0, "[input] max_weight", "must be positive")
    need(len(spec.input.csv_delimiter) == 1, "[input] csv_delimiter", "must be one character")
    for event, weight in spec.input.event_weights.items():
        need(math.isfinite(weight) and weight > 0, f"[input] event_weights.{event}", "must be a positive number")
    m = spec.model
    need(m.factors >= 1, "[model] factors", "must be at least 1")
    need(m.iterations >= 1, "[model] iterations", "must be at least 1")
    need(m.regularization >= 0, "[model] regularization", "must be >= 0")
    need(m.alpha > 0, "[model] alpha", "must be positive")
    need(m.threads >= 0, "[model] threads", "must be >= 0 (0: all cores)")
    need(m.half_life_days >= 0, "[model] half_life_days", "must be >= 0")
    r = spec.recall
    need(r.u2i.k >= 1, "[recall.u2i] k", "must be at least 1")
    need(r.i2i.k >= 0, "[recall.i2i] k", "must be >= 0 (0 turns i2i off)")
    need(r.popular.k >= 1, "[recall.popular] k", "must be at least 1")
    need(r.u2i.batch_size >= 1 and r.i2i.batch_size >= 1, "[recall] batch_size", "must be at least 1")
    need(bool(r.u2i.sources), "[recall.u2i] sources", "must name at least one source")
    for name in r.u2i.sources:
        need(name in U2I_SOURCES, "[recall.u2i] sources", f"{name!r} is not one of {', '.join(U2I_SOURCES)}")
    need(len(set(r.u2i.sources)) == len(r.u2i.sources), "[recall.u2i] sources", "lists a source twice")
    for table, key in ((r.u2i.quotas, "quotas"), (r.u2i.weights, "weights")):
        for name, value in table.items():
            need(name in r.u2i.sources, f"[recall.u2i] {key}.{name}", "is not in [recall.u2i] sources")
            need(math.isfinite(value) and value >= 0, f"[recall.u2i] {key}.{name}", "must be a number >= 0")
    need(0 < r.u2i.approx_target_recall <= 1, "[recall.u2i] approx_target_recall", "must be within 0..1")
    need(r.recent_popular.days >= 1, "[recall.recent_popular] days", "must be at least 1")
    need(r.item_based.recent_items >= 1 and r.item_based.neighbours >= 1, "[recall.item_based]",
         "recent_items and neighbours must be at least 1")
    o = spec.output
    need(o.keep_days >= 1, "[output] keep_days", "must be at least 1")
    need(o.max_rows_per_file >= 1 and o.row_group_rows >= 1, "[output]", "row limits must be at least 1")
    for key, value in (("[output] path", o.path), ("[log] dir", spec.log.dir),
                       ("[input] path", spec.input.path), ("[filter] blocklist_path", spec.filter.blocklist_path)):
        need(".." not in Path(value).parts, key, f"{value!r} may not contain '..'")
    e = spec.evaluate
    need(e.holdout_days >= 0, "[evaluate] holdout_days", "must be >= 0 (0 turns it off)")
    if e.split in ("auto", "temporal"):
        need(e.holdout_days < spec.job.lookback_days, "[evaluate] holdout_days",
             "must be less than [job] lookback_days")
    need(0 < e.holdout_fraction < 1, "[evaluate] holdout_fraction", "must be within 0..1")
    need(e.k >= 1 and e.max_users >= 1, "[evaluate]", "k and max_users must be at least 1")
    g = spec.gate
    need(0 <= g.max_recall_drop <= 1, "[gate] max_recall_drop", "must be within 0..1")
    need(g.min_rows >= 0, "[gate] min_rows", "must be >= 0")
