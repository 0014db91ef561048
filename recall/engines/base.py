"""The engine seam: how a job's window is read, trained and turned into staged tables.

The nightly run (`recall.run.nightly`) is the same for every engine; an engine supplies these
steps. Its data and model handles are its own (in memory, or Spark DataFrames); what crosses
the seam back to the run is shared: input statistics, a HoldoutSet scored by the shared
kernel, returning users for the backtest, and tables staged for the commit protocol.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from recall.evaluate.backtest import Returning
from recall.evaluate.holdout import HoldoutSet
from recall.ingest.prepare import InputStats
from recall.ingest.window import Window
from recall.kernel.blend import Blend
from recall.spec.sections import JobSpec
from recall.store.commit import Publication
from recall.timer import Timer


class Engine(ABC):
    """One implementation per execution backend; chosen by `[job] engine`."""

    name: ClassVar[str]
    can_search: ClassVar[bool] = False  # whether the nightly run's settings search (recall.run.autotune) runs on it

    def __init__(self, spec: JobSpec, root: Path, threads: int, progress: bool = False) -> None:
        self.spec, self.root, self.threads, self.progress = spec, root, threads, progress

    @abstractmethod
    def prepare(self, window: Window, timer: Timer) -> Any:
        """Read and validate the window (exit 3 on bad input); returns the engine's data handle."""

    @abstractmethod
    def input_stats(self, data: Any) -> InputStats:
        """What was read and kept, for the manifest."""

    @abstractmethod
    def holdout(self, data: Any, timer: Timer, sources: tuple[str, ...], spec: JobSpec | None = None) -> HoldoutSet | None:
        """Fit `sources` on the training part of the holdout split (with `spec`'s settings, default
        the engine's); None when the split leaves nothing to score."""

    @abstractmethod
    def returning(self, data: Any, since_us: int) -> Returning | str:
        """Users active after `since_us` with the items they had not touched before (sampled), or
        why there are none."""

    @abstractmethod
    def fit(self, data: Any, how: Blend, timer: Timer) -> Any:
        """Train what the blend's sources and the tables need on the whole window."""

    @abstractmethod
    def write_tables(self, model: Any, how: Blend, publication: Publication, timer: Timer) -> dict:
        """Stage every table of the run into `publication.folder(table)`; returns facts for the
        manifest's `search` section."""

    def with_spec(self, spec: JobSpec) -> Engine:
        """The same engine, and the resources it holds, running `spec` (e.g. with searched settings)."""
        other = copy.copy(self)
        other.spec = spec
        return other

    def close(self) -> None:
        """Release what the engine holds (a Spark session, a pool)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
