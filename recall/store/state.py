"""What is published: manifests, markers, _LATEST, read without ever writing."""
from __future__ import annotations

from recall.store.atomic import read_json
from recall.store.layout import SUCCESS, JobDir
from recall.store.records import Manifest, Marker


def read_manifest(job: JobDir, date: str) -> Manifest | None:
    data = read_json(job.manifest(date))
    return Manifest.from_dict(data) if data is not None else None


def read_marker(job: JobDir, table: str, date: str) -> Marker | None:
    data = read_json(job.partition(table, date) / SUCCESS)
    return Marker.from_dict(data) if data is not None else None


def is_published(job: JobDir, date: str) -> bool:
    """Every table the manifest lists carries _SUCCESS of the manifest's run."""
    manifest = read_manifest(job, date)
    if manifest is None:
        return False
    for table in manifest.tables:
        marker = read_marker(job, table, date)
        if marker is None or marker.run_id != manifest.run_id:
            return False
    return True


def latest(job: JobDir) -> str | None:
    try:
        text = job.latest_file.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def manifest_dates(job: JobDir) -> list[str]:
    """Dates that have a manifest file, oldest first."""
    folder = job.manifest_dir
    return sorted(p.name[3:-5] for p in folder.glob("dt=*.json")) if folder.is_dir() else []


def published_dates(job: JobDir) -> list[str]:
    """Dates with a manifest whose tables are all published, oldest first."""
    return [d for d in manifest_dates(job) if is_published(job, d)]


def previous_published(job: JobDir, date: str) -> str | None:
    """The newest published date before `date` (the backtest's subject, the gate's reference)."""
    earlier = [d for d in published_dates(job) if d < date]
    return earlier[-1] if earlier else None
