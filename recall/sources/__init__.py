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

__all__ = ["SOURCES", "NAMES", "CODE", "FALLBACK", "Source", "FitContext", "spec_blend", "fixed_default", "unmeasured",
           "unknown_sources"]


FIXED_DEFAULT = {"als": 1.0, "item_based": 0.5, "recent_popular": 0.25}  # the blend before runs chose their own
UNMEASURED = {"als": 1.0, "recent_popular": 0.25}  # nothing measured yet: the cheap sources only


def fixed_default(spec: JobSpec) -> Blend:
    """The weights every job had before blends chose themselves (of the candidate sources): what
    the chosen blend is compared with on the reporting users."""
    return weighted({n: w for n, w in FIXED_DEFAULT.items() if n in spec.recall.u2i.sources} or {"popular": 1.0})


def unmeasured(spec: JobSpec) -> Blend:
    """With blend = "auto" and nothing to choose on (no holdout, no earlier choice): ALS and recent
    popularity, the two cheap sources, rather than training everything for a blend nobody measured."""
    return weighted({n: w for n, w in UNMEASURED.items() if n in spec.recall.u2i.sources}
                    or {spec.recall.u2i.sources[0]: 1.0})


def weighted(weights: dict[str, float]) -> Blend:
    return Blend("weighted", tuple(weights), dict(weights))


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
