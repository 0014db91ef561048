"""The nearline overlay: `u2i_fresh/dt=D/`, u2i's columns for the users active since the nightly
run of D, refreshed (recall.run.nearline). Readers take a user's rows from it in place of the
nightly u2i rows (recall.store.reader, `recall serve`, the README's DuckDB query).

It is published by the same commit protocol as the nightly tables (recall.store.commit), as a
lane of its own: `OverlayDir` is the job folder seen by the nearline refresh, whose own files
(manifests, _LATEST, staging, history, lock) are under `_nearline/`:

    u2i_fresh/dt=D/part-NNNNN.parquet, _SUCCESS   the overlay, a table beside u2i
    _nearline/_manifest/dt=D.json                 its manifest, the commit point of a refresh
    _nearline/_LATEST                             the newest date with an overlay (its retention's anchor)
    _nearline/_staging/<run_id>/                  a refresh's work in progress
    _nearline/_lock, _nearline/_history.jsonl     one refresh at a time; every refresh that got the lock

So the nightly manifest of D, `is_published`, `read_manifest` and `_LATEST` are untouched by a
refresh, and a refresh never settles or clears the nightly run's staging (nor the reverse).

An overlay counts only when it is published (its manifest and _SUCCESS name the same run) and
was built on the nightly run the date's manifest names (`base_run_id`): a forced nightly rerun of
the date makes the older overlay invisible until the next refresh, and a new date supersedes it.
(Plain files and JSON only: `recall serve`'s loader, which imports neither numpy nor pyarrow,
follows overlays with it.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recall.store.atomic import read_json
from recall.store.layout import JobDir
from recall.store.records import TableInfo, _known
from recall.store.state import read_marker

U2I_FRESH = "u2i_fresh"
NEARLINE = "_nearline"


@dataclass(frozen=True)
class OverlayDir(JobDir):
    """The job folder as the nearline refresh publishes into it: its own files under `_nearline/`,
    its one table `u2i_fresh`."""

    @property
    def home(self) -> Path:
        return self.root / NEARLINE

    def tables(self) -> list[str]:
        return [U2I_FRESH]


def overlay_dir(job: JobDir) -> OverlayDir:
    return OverlayDir(job.root)


@dataclass(frozen=True)
class FreshManifest:
    """`_nearline/_manifest/dt=D.json`: one refresh of date D's overlay (its commit point)."""

    job: str
    date: str
    run_id: str
    base_run_id: str  # the nightly run of `date` whose item side the users were refreshed against
    tables: dict[str, TableInfo]
    users_refreshed: int = 0  # users in the overlay: every user active since the window, with a known item
    after: str = ""  # the new rows are those after the window: its end (UTC, ISO)
    cutoff: str = ""  # the newest new interaction read (UTC, ISO); "" without a time column
    input: dict = field(default_factory=dict)  # files, rows read, bad rows, history rows, unknown items
    users: dict = field(default_factory=dict)  # active, new to the window, without a known item
    fingerprint: str = ""  # of the input files and the basis: an unchanged one needs no new refresh
    spec_hash: str = ""
    code_version: str = ""
    threads: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    published_at: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> FreshManifest | None:
        try:
            tables = {str(n): TableInfo(int(t["rows"]), dict(t.get("files") or {})) for n, t in data["tables"].items()}
            return cls(tables=tables, **_known(cls, {k: v for k, v in data.items() if k != "tables"}))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    @property
    def rows(self) -> int:
        return self.tables[U2I_FRESH].rows if U2I_FRESH in self.tables else 0


def read_fresh_manifest(job: JobDir, date: str) -> FreshManifest | None:
    data = read_json(overlay_dir(job).manifest(date))
    return FreshManifest.from_dict(data) if data is not None else None


def overlay_state(job: JobDir, date: str, base_run_id: str) -> tuple[FreshManifest | None, bool]:
    """The overlay readers use for `date` when its nightly run is `base_run_id`, and whether that
    answer is settled. (None, True): there is none (never refreshed, built on another nightly run,
    or retired); (None, False): a refresh is swapping it in right now (milliseconds), or died
    doing so (its next run puts the previous overlay back): ask again, or go without."""
    manifest = read_fresh_manifest(job, date)
    if manifest is None or manifest.base_run_id != base_run_id:
        return None, True
    marker = read_marker(job, U2I_FRESH, date)
    if marker is None:
        return None, True  # the nightly run's retention removed it, manifest last
    if marker.run_id != manifest.run_id:
        return None, False
    return manifest, True
