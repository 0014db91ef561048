"""Checks a single key's type cannot express, each naming the key."""
from __future__ import annotations

import math
import zoneinfo
from pathlib import Path

from recall.errors import SpecError
from recall.spec.cron import check_expression
from recall.spec.sections import JOB_NAME_RE, JobSpec


MAX_DAYS = 36_525  # 100 years: longer windows and retention are typos, and overflow dates


def check_spec(spec: JobSpec, source: str, origins=None) -> None:
    """Checks a single key's type cannot express; each names the key, and blames the `--set`
    that set it when `origins` (recall.spec.load.Origins) says one did, else `source`."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise SpecError(f"{origins.of_label(key) if origins is not None else source}: {key} {msg}")

    need(bool(JOB_NAME_RE.match(spec.job.name)), "[job] name",
         f"{spec.job.name!r} may hold only letters, digits, '_' and '-' (at most 64)")
    try:
        zoneinfo.ZoneInfo(spec.job.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        need(False, "[job] timezone", f"{spec.job.timezone!r} is not a known IANA time zone")
    need(spec.job.lookback_days >= 1, "[job] lookback_days", "must be at least 1")
    need(spec.job.lookback_days <= MAX_DAYS, "[job] lookback_days",
         f"must be at most {MAX_DAYS} (100 years), got {spec.job.lookback_days}")
    if spec.job.schedule:
        check_expression(spec.job.schedule, f"{source}: [job] schedule")
    need(bool(spec.input.path), "[input] path", "is required")
    need(0.0 <= spec.input.max_bad_fraction <= 1.0, "[input] max_bad_fraction", "must be within 0..1")
    need(spec.input.max_weight > 0, "[input] max_weight", "must be positive")
    need(len(spec.input.csv_delimiter) == 1, "[input] csv_delimiter", "must be one character")
    for event, weight in spec.input.event_weights.items():
        need(math.isfinite(weight) and weight > 0, f"[input] event_weights.{event}", "must be a positive number")
    m = spec.model
    need(m.factors >= 1, "[model] factors", "must be at least 1")
    need(m.iterations >= 1, "[model] iterations", "must be at least 1")
    need(m.regularization >= 0, "[model] regularization", "must be >= 0")
    need(m.alpha > 0, "[model] alpha", "must be positive")
    need(m.threads >= 0, "[model] threads", "must be >= 0 (0: all cores)")
    need(m.half_life_days >= 0, "[model] half_life_days", "must be >= 0")
    r = spec.recall
    need(r.u2i.k >= 1, "[recall.u2i] k", "must be at least 1")
    need(r.i2i.k >= 0, "[recall.i2i] k", "must be >= 0 (0 turns i2i off)")
    need(r.popular.k >= 1, "[recall.popular] k", "must be at least 1")
    need(r.u2i.batch_size >= 1 and r.i2i.batch_size >= 1, "[recall] batch_size", "must be at least 1")
    need(bool(r.u2i.sources), "[recall.u2i] sources", "must name at least one source")
    need(len(set(r.u2i.sources)) == len(r.u2i.sources), "[recall.u2i] sources", "lists a source twice")
    for table, key in ((r.u2i.quotas, "quotas"), (r.u2i.weights, "weights")):
        for name, value in table.items():
            need(name in r.u2i.sources, f"[recall.u2i] {key}.{name}", "is not in [recall.u2i] sources")
            need(math.isfinite(value) and value >= 0, f"[recall.u2i] {key}.{name}", "must be a number >= 0")
    need(0 < r.u2i.approx_target_recall <= 1, "[recall.u2i] approx_target_recall", "must be within 0..1")
    need(r.recent_popular.days >= 1, "[recall.recent_popular] days", "must be at least 1")
    need(r.item_based.max_user_items >= 0, "[recall.item_based] max_user_items", "must be >= 0 (0: no cap)")
    for key, days in (("[recall.recent_popular] days", r.recent_popular.days), ("[recall.popular] days", r.popular.days)):
        need(days <= MAX_DAYS, key, f"must be at most {MAX_DAYS} (100 years), got {days}")
    need(r.item_based.recent_items >= 1 and r.item_based.neighbours >= 1, "[recall.item_based]",
         "recent_items and neighbours must be at least 1")
    need(r.ease.max_items >= 2 and r.ease.l2 > 0, "[recall.ease]", "max_items must be at least 2 and l2 positive")
    o = spec.output
    need(o.keep_days >= 1, "[output] keep_days", "must be at least 1")
    need(o.keep_days <= MAX_DAYS, "[output] keep_days", f"must be at most {MAX_DAYS} (100 years), got {o.keep_days}")
    need(o.max_rows_per_file >= 1 and o.row_group_rows >= 1, "[output]", "row limits must be at least 1")
    for key, value in (("[output] path", o.path), ("[log] dir", spec.log.dir),
                       ("[input] path", spec.input.path), ("[filter] blocklist_path", spec.filter.blocklist_path),
                       ("[monitor] textfile", spec.monitor.textfile)):
        need(".." not in Path(value).parts, key, f"{value!r} may not contain '..'")
    e = spec.evaluate
    need(e.holdout_days >= 0, "[evaluate] holdout_days", "must be >= 0 (0 turns it off)")
    if e.split in ("auto", "temporal"):
        need(e.holdout_days < spec.job.lookback_days, "[evaluate] holdout_days",
             "must be less than [job] lookback_days")
    need(0 < e.holdout_fraction < 1, "[evaluate] holdout_fraction", "must be within 0..1")
    need(e.k >= 1 and e.max_users >= 1, "[evaluate]", "k and max_users must be at least 1")
    a = spec.autotune
    need(a.every_days >= 0, "[autotune] every_days", "must be >= 0 (0: never search in a run)")
    need(0 <= a.backtest_drop <= 1, "[autotune] backtest_drop", "must be within 0..1")
    need(a.budget_s > 0 and a.trials >= 1, "[autotune]", "budget_s must be positive and trials at least 1")
    mon = spec.monitor
    need(not mon.textfile or mon.textfile.endswith(".prom"), "[monitor] textfile",
         f"{mon.textfile!r} must end in .prom (node-exporter's textfile collector reads only *.prom files)")
    need(0 < mon.timeout <= 3600, "[monitor] timeout", "must be within 0..3600 seconds")
    need(bool(spec.spark.master.strip()), "[spark] master", "must name a master (local[2], spark://..., yarn)")
    need(spec.spark.users_per_task >= 0, "[spark] users_per_task", "must be >= 0 (0: automatic)")
    if spec.nearline.schedule:
        check_expression(spec.nearline.schedule, f"{source}: [nearline] schedule")
    need(spec.nearline.threads >= 0, "[nearline] threads", "must be >= 0 (0: as [model] threads)")
    g = spec.gate
    need(0 <= g.max_recall_drop <= 1, "[gate] max_recall_drop", "must be within 0..1")
    need(g.min_rows >= 0, "[gate] min_rows", "must be >= 0")
