"""Where things are under <output.path>/<job>/ (README, "The tables"):

    <table>/dt=D/part-NNNNN.parquet, <table>/dt=D/_SUCCESS   published partitions
    item_side/dt=D/<name>.parquet, settings.json             the model's item side (names kept)
    _manifest/dt=D.json                                      one manifest per published date
    _LATEST                                                  newest fully published date
    _staging/<run_id>/<table>/dt=D/                          a run's work in progress
    _history.jsonl, _lock                                    the run history, the job's lock
    _tuned.json                                              settings the run's own search chose

The files private to the nightly run (manifests, _LATEST, staging, history, lock) are under the
JobDir's `home`, the job folder itself; the nearline refresh keeps its own under `_nearline/`
(recall.store.overlay), so neither ever cleans up, rolls back or waits for the other's work.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from recall.spec.sections import JobSpec

SUCCESS = "_SUCCESS"
MANIFESTS = "_manifest"
LATEST = "_LATEST"
STAGING = "_staging"
JOURNAL = "_PUBLISHING"
HISTORY = "_history.jsonl"
LOCK = "_lock"
TUNED = "_tuned.json"
TABLES = ("u2i", "i2i", "popular", "u2i_fresh")  # the tables runs publish (readers refuse other names)
ITEM_SIDE = "item_side"  # the model's item side, published with the tables (recall.store.item_side)
NAMED = (ITEM_SIDE,)  # partitions whose files keep their own names when sealed
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")


@dataclass(frozen=True)
class JobDir:
    """Paths of one job's output folder."""

    root: Path  # <output.path>/<job>

    @property
    def name(self) -> str:
        return self.root.name

    def partition(self, table: str, date: str) -> Path:
        return self.root / table / f"dt={date}"

    @property
    def home(self) -> Path:
        """Where the publisher's own files are: manifests, _LATEST, staging, history, lock."""
        return self.root

    @property
    def manifest_dir(self) -> Path:
        return self.home / MANIFESTS

    def manifest(self, date: str) -> Path:
        return self.manifest_dir / f"dt={date}.json"

    @property
    def latest_file(self) -> Path:
        return self.home / LATEST

    @property
    def history_file(self) -> Path:
        return self.home / HISTORY

    @property
    def lock_file(self) -> Path:
        return self.home / LOCK

    @property
    def tuned_file(self) -> Path:
        return self.root / TUNED

    @property
    def staging_root(self) -> Path:
        return self.home / STAGING

    def staging(self, run_id: str) -> Path:
        return self.staging_root / run_id

    def staged(self, run_id: str, table: str, date: str) -> Path:
        return self.staging(run_id) / table / f"dt={date}"

    def tables(self) -> list[str]:
        """Table folders present (every folder not starting with '_' or '.')."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def job_dir(spec: JobSpec, root: Path) -> JobDir:
    """A job's output folder: <output.path>/<job>, relative to the project folder `root`."""
    return JobDir(root / spec.output.path / spec.name)  # an absolute path replaces root


def part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def next_part(final: Path) -> int:
    """The first part number for a new run of the partition at `final`: after the numbers its
    current files use, so that a reader that listed the old files and opens them after the swap
    gets "not found", never a file of the new run in place of one of the old."""
    numbers = [int(m.group(1)) for p in final.glob("part-*.parquet") if (m := PART_RE.match(p.name))]
    return max(numbers) + 1 if numbers else 0


def data_files(folder: Path, any_kind: bool = False) -> list[Path]:
    """A partition's data files as any writer names them (ours, Spark's part-00000-<uuid>...),
    leaving out markers and hidden files (`_SUCCESS`, `.crc`); Parquet only unless `any_kind`."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (any_kind or p.suffix == ".parquet")
                  and not p.name.startswith(("_", ".")))
