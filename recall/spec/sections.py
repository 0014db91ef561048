"""The job spec's sections as typed dataclasses, with their defaults (README's spec table)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Id = int | str


@dataclass
class JobSection:
    name: str = ""  # default: the spec file's stem
    schedule: str = ""  # cron expression; empty means not scheduled
    timezone: str = "UTC"
    lookback_days: int = 28
    engine: str = "local"  # "local", or "spark" (pip install 'recall[spark]')


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
    # the sources that may take part; with blend = "auto" each run chooses among them
    sources: list[str] = field(default_factory=lambda: ["als", "item_based", "recent_popular", "popular", "ease"])
    # auto: weights chosen on the holdout every run; ordered, quota, weighted: fixed by the spec
    blend: Literal["auto", "ordered", "quota", "weighted"] = "auto"
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
    # co-occurrence: each user's `max_user_items` heaviest interactions count (0: all); the
    # heaviest users cost the most (d^2) and add the least to any item's neighbours
    max_user_items: int = 1000


@dataclass
class EaseSection:
    max_items: int = 3000  # the most popular items modelled (the inversion is cubic in them)
    l2: float = 200.0  # the ridge on the Gram matrix


@dataclass
class RecallSection:
    u2i: U2ISection = field(default_factory=U2ISection)
    i2i: I2ISection = field(default_factory=I2ISection)
    popular: PopularSection = field(default_factory=PopularSection)
    recent_popular: RecentPopularSection = field(default_factory=RecentPopularSection)
    item_based: ItemBasedSection = field(default_factory=ItemBasedSection)
    ease: EaseSection = field(default_factory=EaseSection)


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
    # refuse a merged list measurably below the popularity baseline on the holdout's reporting
    # users: their mean per-user recall difference more than 2 standard errors below zero
    popular_floor: bool = True


@dataclass
class AutotuneSection:
    """The nightly run's own search of the model settings and source options (kept in the job's
    output folder, never written into the spec; keys the spec sets explicitly are never changed)."""

    every_days: int = 7  # search again once the settings are this many days old; 0: never in a run
    backtest_drop: float = 0.2  # ... or when the backtest recall fell this much (relative) since
    budget_s: float = 120.0  # the search's time budget
    trials: int = 8  # at most this many ALS settings tried


@dataclass
class NearlineSection:
    """`recall nearline`: the users active since the nightly run, refreshed every few minutes."""

    schedule: str = ""  # cron expression of the refresh (beside the nightly entry); empty: not scheduled
    threads: int = 0  # 0: as [model] threads


@dataclass
class LogSection:
    dir: str = "logs"
    rotation: str = "50 MB"
    retention: str | int = "30 days"  # a period, or how many rotated files to keep
    compression: str = "gz"
    level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"


@dataclass
class MonitorSection:
    # a Prometheus node-exporter textfile (a *.prom path) rewritten after every run; "": none
    textfile: str = ""
    on_failure: str = ""  # a shell command run after a run that failed (job, date, code, error in its env)
    on_success: str = ""  # a shell command run after a run that published
    timeout: float = 60.0  # seconds a command may run before it is killed


@dataclass
class SparkSection:
    """The Spark engine's session ([job] engine = "spark"); read by no other engine."""

    master: str = "local[*]"  # local[N], spark://host:port, yarn, k8s://...
    # Spark settings passed through to the session as they are, e.g. [spark.conf]
    # "spark.executor.memory" = "8g"; they win over the engine's own defaults
    conf: dict[str, str] = field(default_factory=dict)
    # ALS checkpoints (lineage cut every 10 iterations); "": a folder in the job's staging area.
    # On a cluster it must be a path every executor reaches (hdfs://..., a shared mount)
    checkpoint_dir: str = ""
    # users per candidate task (0: about 4 tasks per core, at least 20k users each)
    users_per_task: int = 0


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
    autotune: AutotuneSection = field(default_factory=AutotuneSection)
    nearline: NearlineSection = field(default_factory=NearlineSection)
    log: LogSection = field(default_factory=LogSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    spark: SparkSection = field(default_factory=SparkSection)
    source: str = field(default="", compare=False)  # the file it came from
    explicit: frozenset[str] = field(default=frozenset(), compare=False)  # keys the file or --set gave

    @property
    def name(self) -> str:
        return self.job.name

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("explicit")
        return data

    def spec_hash(self) -> str:
        canon = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

