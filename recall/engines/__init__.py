"""Engines by name (`[job] engine`), imported on first use: an optional engine's libraries
(PySpark) are needed only by the jobs that ask for it."""
from __future__ import annotations

import importlib
from pathlib import Path

from recall.errors import SpecError
from recall.spec.sections import JobSpec

ENGINES = {
    "local": ("recall.engines.local", "LocalEngine", "recall"),
    "spark": ("recall.engines.spark", "SparkEngine", "recall[spark]"),
}


def check_engine(spec: JobSpec) -> None:
    if spec.job.engine not in ENGINES:
        raise SpecError(f"{spec.source}: [job] engine {spec.job.engine!r} is not one of {', '.join(ENGINES)}")


def create(spec: JobSpec, root: Path, threads: int, progress: bool = False):
    """The engine the spec names, ready to run."""
    check_engine(spec)
    module, cls, package = ENGINES[spec.job.engine]
    try:
        impl = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise SpecError(f"{spec.source}: [job] engine {spec.job.engine!r} needs {exc.name}, which is not installed",
                        hint=f"pip install '{package}'") from None
    return impl(spec, root, threads, progress)
