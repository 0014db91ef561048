"""The nightly run's own search of its settings: the ALS settings and the sources' options,
searched on the holdout within a time budget every `[autotune] every_days` days (or when the
backtest drops), kept in the job's output folder (`_tuned.json`) and reused by the runs in
between. The spec is never edited, and a key the spec sets explicitly always wins."""
from __future__ import annotations

import datetime as dt
import time

from loguru import logger

from recall.engines.base import Engine
from recall.run.tune import search, with_settings
from recall.spec.sections import JobSpec
from recall.store.atomic import read_json, write_atomic
from recall.store.layout import JobDir
from recall.store.records import TunedState, to_json
from recall.timer import Timer


def read_state(job: JobDir) -> TunedState | None:
    data = read_json(job.tuned_file)
    return TunedState.from_dict(data) if data is not None else None


def due(spec: JobSpec, state: TunedState | None, date: str, served: dict | None) -> str | None:
    """Why the settings should be searched in this run, or None."""
    every = spec.autotune.every_days
    if every == 0 or spec.evaluate.holdout_days == 0:
        return None
    if state is None:
        return "no settings searched yet"
    age = (dt.date.fromisoformat(date) - dt.date.fromisoformat(state.date)).days
    if age >= every:
        return f"the settings were searched {age} day(s) ago ([autotune] every_days = {every})"
    now = (served or {}).get("recall")
    if now is not None and state.backtest_recall and now < state.backtest_recall * (1 - spec.autotune.backtest_drop):
        return (f"the backtest fell from {state.backtest_recall:.4f} to {now:.4f} "
                f"(more than [autotune] backtest_drop = {spec.autotune.backtest_drop:g})")
    return None


def tuned_spec(engine: Engine, data, spec: JobSpec, job: JobDir, date: str, run_id: str, served: dict | None,
               timer: Timer) -> tuple[JobSpec, dict]:
    """The spec with the searched settings applied (searching first when due), and what was done."""
    state = read_state(job)
    reason = due(spec, state, date, served)
    if reason and not engine.can_search:
        logger.info(f"settings search due ({reason}) but the {engine.name} engine does not search in a run")
        reason = None
    if reason:
        logger.info(f"searching the settings: {reason}; budget {spec.autotune.budget_s:g}s")
        with timer.step("autotune"):
            start = time.monotonic()
            result = search(data, spec, engine.threads, spec.autotune.budget_s, spec.autotune.trials,
                            spec.model.random_state, log=logger.debug, fixed=spec.explicit)
        state = TunedState(date=date, run_id=run_id, settings=result.settings(), split=result.split,
                           users=list(result.users), merged_recall=result.merged.recall,
                           backtest_recall=(served or {}).get("recall"),
                           seconds=round(time.monotonic() - start, 1), trials=len(result.trials))
        write_atomic(job.tuned_file, to_json(state))
        logger.info(f"settings searched in {state.seconds:.0f}s ({state.trials} trials): {state.settings or 'no change'}")
    if state is None or not state.settings:
        return spec, ({"searched": True, "reason": reason, "applied": {}} if reason else {})
    applied = {k: v for k, v in state.settings.items() if k not in spec.explicit}
    kept = sorted(k for k in state.settings if k in spec.explicit)
    return with_settings(spec, applied), {
        "searched": bool(reason), "reason": reason or "", "from": state.date, "applied": applied,
        "spec_wins": kept}
