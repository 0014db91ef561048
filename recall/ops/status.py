"""`recall status`: per job, what is published, how old, how big, how long, what failed, what's next."""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from recall.errors import RecallError
from recall.store.layout import job_dir
from recall.spec.cron import next_runs
from recall.spec.sections import JobSpec
from recall.store import history
from recall.store.state import latest, read_manifest


def job_row(spec: JobSpec, root: Path) -> dict:
    out = job_dir(spec, root)
    last = latest(out)
    manifest = read_manifest(out, last) if last else None
    runs = history.runs(out)
    failure = next((r for r in reversed(runs) if r.status == "failed"), None)
    age = ""
    if manifest and manifest.published_at:
        age = ago((dt.datetime.now(dt.timezone.utc)
                   - dt.datetime.fromisoformat(manifest.published_at)).total_seconds())
    rows = manifest.rows if manifest else {}
    merged = manifest.metrics.merged if manifest and manifest.metrics else None
    last_ok = next((r for r in reversed(runs) if r.status == "published" and r.date == last), None)
    return {
        "job": spec.name,
        "latest": last or "-",
        "age": age or "-",
        "u2i": f"{rows['u2i']:,}" if "u2i" in rows else "-",
        "i2i": f"{rows['i2i']:,}" if "i2i" in rows else "-",
        "recall": f"{merged.recall:.4f}" if merged else "-",
        "backtest": f"{manifest.backtest['recall']:.4f}" if manifest and "recall" in (manifest.backtest or {}) else "-",
        "blend": ",".join(f"{n}:{w:g}" for n, w in manifest.blend.get("weights", {}).items()) if manifest else "-",
        "duration": f"{last_ok.duration_s:.1f}s" if last_ok else "-",
        "last failure": (f"{failure.date} exit {failure.exit_code} (run {failure.started[:16] or '?'}): "
                         f"{failure.error[:60]}" if failure else "-"),
        "next run": next_runs(spec.job.schedule, 1)[0].strftime("%Y-%m-%d %H:%M") if spec.job.schedule else "-",
    }


def ago(seconds: float) -> str:
    """How long ago, in the unit a person reads at a glance."""
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f}d"


def print_status(root: Path, job: str | None, load: Callable) -> int:
    names = [job] if job else sorted(p.stem for p in (root / "jobs").glob("*.toml"))
    rows = []
    for name in names:
        try:
            rows.append(job_row(load(name), root))
        except RecallError as exc:
            if job:
                raise
            rows.append({"job": name, "latest": "-", "last failure": f"spec error: {exc}"[:70]})
    if not rows:
        print(f"no job specs in {root / 'jobs'}")
        return 0
    cols = ["job", "latest", "age", "u2i", "i2i", "recall", "backtest", "blend", "duration", "next run", "last failure"]
    widths = {c: max(len(c), *(len(str(r.get(c, "-"))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c, "-")).ljust(widths[c]) for c in cols).rstrip())
    return 0
