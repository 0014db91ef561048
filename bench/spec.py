"""The job specs the benchmarks publish with: one base (the generated log's event weights, 64
factors, k = 100 and 50), each benchmark's own settings on top as dotted keys, written as TOML."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

BASE: dict[str, Any] = {
    "input.event_weights": {"view": 1.0, "click": 3.0, "purchase": 10.0},  # bench.gen's events
    "model.factors": 64,
    "model.iterations": 15,
    "model.threads": 2,
    "recall.u2i.k": 100,
    "recall.i2i.k": 50,
}


def spec_text(name: str, days: int, log: Path | str, settings: dict[str, Any] | None = None) -> str:
    """A job spec `name` over `days` days of `log`: BASE with `settings` (dotted keys) on top."""
    document = tomlkit.document()
    merged = {"job.name": name, "job.lookback_days": days, "input.path": log, **BASE, **(settings or {})}
    for key, value in merged.items():
        *sections, leaf = key.split(".")
        node = document
        for section in sections:
            if section not in node:
                node[section] = tomlkit.table(is_super_table=section == "recall")
            node = node[section]
        if isinstance(value, dict):
            value, table = tomlkit.inline_table(), value
            value.update(table)
        node[leaf] = str(value) if isinstance(value, Path) else value
    return tomlkit.dumps(document)


def write_job(path: Path, name: str, days: int, log: Path | str, settings: dict[str, Any] | None = None) -> Path:
    """spec_text written to `path` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec_text(name, days, log, settings))
    return path
