"""What other programs read, as typed records: the partition marker (_SUCCESS), the manifest of a
published date, and a line of the run history. Each is built in one place and read through its
type; `from_dict` accepts what older versions wrote (missing keys take their defaults)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


def _known(cls: type, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def to_json(record: Any) -> str:
    return json.dumps(dataclasses.asdict(record), indent=1, default=str) + "\n"


@dataclass(frozen=True)
class Marker:
    """_SUCCESS of a published partition: the run that wrote it and exactly its files."""

    run_id: str
    rows: int
    files: dict[str, int]  # part file -> rows

    @classmethod
    def from_dict(cls, data: dict) -> Marker | None:
        """None for what is not ours (e.g. Hadoop's empty _SUCCESS)."""
        try:
            return cls(str(data["run_id"]), int(data["rows"]), {str(k): int(v) for k, v in data["files"].items()})
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True)
class TableInfo:
    rows: int
    files: dict[str, int]


@dataclass(frozen=True)
class Scores:
    """Ranking metrics of one list on one set of users."""

    recall: float
    ndcg: float = 0.0
    hit_rate: float = 0.0
    coverage: float = 0.0
    users: int = 0

    @classmethod
    def from_dict(cls, data: dict | None) -> Scores | None:
        return cls(**_known(cls, data)) if isinstance(data, dict) and "recall" in data else None


@dataclass(frozen=True)
class Holdout:
    """The holdout evaluation of a run: each source, the merged list and the popularity baseline."""

    k: int
    split: str
    merged: Scores
    popular_baseline: Scores
    sources: dict[str, Scores] = field(default_factory=dict)
    train_rows: int = 0
    relevant_pairs: int = 0
    users_evaluated: int = 0
    # blend = "auto": the blend is chosen on some users and every figure above is on the others
    users_choosing: int = 0  # 0: nothing was chosen, every evaluated user reports
    users_reporting: int = 0
    choosing: Scores | None = None  # the chosen blend on the users it was chosen on (optimistic)
    fixed_default: Scores | None = None  # the fixed default weights, on the reporting users
    vs_popular: dict | None = None  # the merged list minus the popular baseline, per reporting user

    @classmethod
    def from_dict(cls, data: dict | None) -> Holdout | None:
        if not isinstance(data, dict):
            return None
        merged, base = Scores.from_dict(data.get("merged")), Scores.from_dict(data.get("popular_baseline"))
        if merged is None or base is None:
            return None
        sources = {n: s for n, v in (data.get("sources") or {}).items() if (s := Scores.from_dict(v))}
        scores = ("merged", "popular_baseline", "sources", "choosing", "fixed_default")
        rest = _known(cls, {k: v for k, v in data.items() if k not in scores})
        return cls(merged=merged, popular_baseline=base, sources=sources, choosing=Scores.from_dict(data.get("choosing")),
                   fixed_default=Scores.from_dict(data.get("fixed_default")), **rest)


@dataclass(frozen=True)
class GateCheck:
    """One check of the quality gate, with its value and limit."""

    check: str
    value: float
    limit: float
    passed: bool
    previous: float | None = None  # max_recall_drop: the previous run's recall

    @classmethod
    def from_dict(cls, data: dict) -> GateCheck | None:
        try:
            return cls(**_known(cls, data))
        except TypeError:
            return None


@dataclass(frozen=True)
class Manifest:
    """One published date (the commit point: a date is published once this is written)."""

    job: str
    date: str
    run_id: str
    tables: dict[str, TableInfo]
    engine: str = "local"
    spec: str = ""
    spec_hash: str = ""
    code_version: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    threads: int = 0
    forced: bool = False
    skip_gate: bool = False
    window: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    blend: dict = field(default_factory=dict)
    blend_source: str = ""  # chosen on the holdout, kept from an earlier run, or the spec's
    tuned: dict = field(default_factory=dict)  # the settings searched by the run (or an earlier one) it used
    metrics: Holdout | None = None
    backtest: dict | None = None
    gate: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    published_at: str = ""
    rebuilt: str = ""  # set when a run rebuilt a corrupt manifest from the tables' _SUCCESS markers

    @classmethod
    def from_dict(cls, data: dict) -> Manifest | None:
        """None when `data` is not a manifest (a corrupt or foreign file)."""
        try:
            tables = {str(n): TableInfo(int(t["rows"]), dict(t.get("files") or {}))
                      for n, t in data["tables"].items()}
            rest = _known(cls, {k: v for k, v in data.items() if k not in ("tables", "metrics")})
            return cls(tables=tables, metrics=Holdout.from_dict(data.get("metrics")), **rest)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    @property
    def rows(self) -> dict[str, int]:
        return {name: t.rows for name, t in self.tables.items()}

    @property
    def duration_s(self) -> float:
        return round(sum(v for k, v in self.timings.items() if "." not in k), 3)


@dataclass(frozen=True)
class TunedState:
    """`_tuned.json`: the settings the nightly run's own search chose, reused until the next search."""

    date: str  # the run date of the search
    run_id: str
    settings: dict[str, Any]  # spec keys ("model.factors", ...) -> value
    split: str = ""
    users: list[int] = field(default_factory=list)  # choosing, reporting
    merged_recall: float = 0.0  # the tuned blend on the reporting users
    backtest_recall: float | None = None  # the backtest of the run that searched
    seconds: float = 0.0
    trials: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> TunedState | None:
        try:
            state = cls(**_known(cls, data))
        except TypeError:
            return None
        return state if isinstance(state.settings, dict) else None


@dataclass(frozen=True)
class RunRecord:
    """One line of `_history.jsonl`: every run that held the job's lock."""

    date: str
    run_id: str
    status: str  # published, skipped, failed
    exit_code: int
    started: str = ""
    duration_s: float = 0.0
    forced: bool = False
    error: str = ""
    rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord | None:
        """None for what is not a run record (a line of garbage, a torn line)."""
        try:
            record = cls(**_known(cls, data))
            return dataclasses.replace(
                record, date=str(record.date), run_id=str(record.run_id), status=str(record.status),
                exit_code=int(record.exit_code), started=str(record.started or ""),
                duration_s=float(record.duration_s or 0.0), forced=bool(record.forced), error=str(record.error or ""),
                rows={str(k): int(v) for k, v in (record.rows or {}).items()})
        except (TypeError, ValueError, AttributeError):
            return None
