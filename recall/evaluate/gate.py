"""The quality gate: checks a run must pass before it publishes."""
from __future__ import annotations

from recall.errors import GateError
from recall.spec.sections import GateSection
from recall.store.records import GateCheck, Holdout


def gate_checks(spec: GateSection, metrics: Holdout | None, previous: Holdout | None, rows: int) -> list[GateCheck]:
    """Every gate check with its value and limit; `passed` False on the failing ones."""
    checks = [GateCheck("min_rows", rows, spec.min_rows, rows >= spec.min_rows)]
    if metrics is not None:
        recall, coverage = metrics.merged.recall, metrics.merged.coverage
        checks.append(GateCheck("min_recall", recall, spec.min_recall, recall >= spec.min_recall))
        checks.append(GateCheck("min_coverage", coverage, spec.min_coverage, coverage >= spec.min_coverage))
        gap = metrics.vs_popular
        if spec.popular_floor and gap:
            below = gap["difference"] + 2 * gap["se"] < 0
            checks.append(GateCheck("popular_floor", recall, metrics.popular_baseline.recall, not below))
        before = previous.merged.recall if previous is not None and previous.k == metrics.k else None
        if before:
            floor = before * (1 - spec.max_recall_drop)
            checks.append(GateCheck("max_recall_drop", recall, round(floor, 6), recall >= floor, before))
    return checks


def enforce_gate(checks: list[GateCheck], skip: bool) -> None:
    failed = [c for c in checks if not c.passed]
    if failed and not skip:
        c = failed[0]
        if c.check == "max_recall_drop":
            detail = f"recall {c.value} fell more than the allowed drop from the previous run's {c.previous} (floor {c.limit})"
        elif c.check == "popular_floor":
            detail = (f"the merged list's recall {c.value} is measurably below the popular baseline's {c.limit} on the "
                      "holdout's reporting users (set [gate] popular_floor = false to publish such lists)")
        else:
            detail = f"{c.value} is below the minimum {c.limit}"
        raise GateError(f"quality gate refused to publish: {c.check}: {detail}")
