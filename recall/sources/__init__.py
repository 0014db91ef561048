"""Candidate sources by name. A new source is one module (its kernel and how it is built) and
one entry in SOURCES; its position there is its code in memory (the `source` column holds names)."""
from __future__ import annotations

from recall.kernel.blend import Blend
from recall.sources import als, ease, item_based, popular, recent_popular
from recall.sources.base import FitContext, Source
from recall.spec.sections import JobSpec

SOURCES: dict[str, Source] = {s.SOURCE.name: s.SOURCE for s in (als, popular, recent_popular, item_based, ease)}
NAMES: tuple[str, ...] = tuple(SOURCES)
CODE: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
FALLBACK = "popular"  # what every list is topped up from

__all__ = ["SOURCES", "NAMES", "CODE", "FALLBACK", "Source", "FitContext", "spec_blend", "unknown_sources"]


def spec_blend(spec: JobSpec) -> Blend:
    """The blend the spec fixes, every weight resolved (the sources' defaults where none is given);
    for blend = "auto", the weighted blend of every candidate source with those fixed weights,
    which the run improves on (and falls back to when nothing can be chosen)."""
    u2i = spec.recall.u2i
    weights = {name: u2i.weights.get(name, SOURCES[name].default_weight) for name in u2i.sources}
    mode = "weighted" if u2i.blend == "auto" else u2i.blend
    return Blend(mode, tuple(u2i.sources), weights if mode == "weighted" else {}, dict(u2i.quotas))


def unknown_sources(names: list[str]) -> list[str]:
    return [n for n in names if n not in SOURCES]
