"""Loading a job: its spec, checked against the registries of sources and engines too (every
entry point loads jobs through here: the CLI, cron, status, the benchmark)."""
from __future__ import annotations

from pathlib import Path

from recall.engines import check_engine
from recall.errors import SpecError
from recall.sources import NAMES, unknown_sources
from recall.spec.load import load_spec, resolve_job_path
from recall.spec.sections import JobSpec


def load_job(path: Path, overrides: list[str] | None = None) -> JobSpec:
    spec = load_spec(path, overrides)
    check_job(spec)
    return spec


def check_job(spec: JobSpec) -> None:
    unknown = unknown_sources(spec.recall.u2i.sources)
    if unknown:
        raise SpecError(f"{spec.source}: [recall.u2i] sources {unknown[0]!r} is not one of {', '.join(NAMES)}")
    check_engine(spec)


def find_job(job: str, root: Path, overrides: list[str] | None = None) -> JobSpec:
    """JOB as the command line names it: a path to a TOML file, or the name of a file in jobs/."""
    return load_job(resolve_job_path(job, root), overrides)
