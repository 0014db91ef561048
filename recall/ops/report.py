"""`recall report`: one self-contained HTML page with the metrics and row counts of every published date."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

from recall.store import history
from recall.store.atomic import write_atomic
from recall.store.layout import JobDir
from recall.store.state import published_dates, read_manifest


def collect(out: JobDir) -> list[dict]:
    """One row per published date, oldest first, flattened from its manifest."""
    rows = []
    for date in published_dates(out):
        m = read_manifest(out, date)
        if m is None:
            continue
        row = {"date": date, "run_id": m.run_id, "skip_gate": m.skip_gate, "seconds": round(m.duration_s, 1)}
        for table, count in m.rows.items():
            row[f"rows_{table}"] = count
        if m.metrics is not None:
            row["k"] = m.metrics.k
            row["merged"] = m.metrics.merged.recall
            row["coverage"] = m.metrics.merged.coverage
            row["popular_baseline"] = m.metrics.popular_baseline.recall
            for name, values in m.metrics.sources.items():
                row[f"source_{name}"] = values.recall
            if m.metrics.fixed_default is not None:
                row["fixed_default"] = m.metrics.fixed_default.recall
                row["choosing"] = m.metrics.choosing.recall
        if m.backtest and "recall" in m.backtest:
            row["backtest"] = m.backtest["recall"]
        row["blend"] = ", ".join(f"{n} {w:g}" for n, w in m.blend.get("weights", {}).items()) or m.blend.get("mode", "")
        rows.append(row)
    return rows


def chart(rows: list[dict], keys: list[str], title: str, ylabel: str) -> str:
    """A line chart of `keys` over the dates, as a base64 PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    dates = [dt.date.fromisoformat(r["date"]) for r in rows]
    for key in keys:
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(dates, [float("nan") if v is None else v for v in values], marker="o", ms=3,
                    label=key.removeprefix("source_").removeprefix("rows_"))
    from matplotlib.dates import DateFormatter, DayLocator

    ax.xaxis.set_major_locator(DayLocator(interval=max(1, len(dates) // 10)))
    ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def drops(rows: list[dict], key: str, limit: float) -> set[str]:
    """Dates whose `key` fell more than `limit` (relative) from the date before."""
    flagged = set()
    for before, after in zip(rows, rows[1:]):
        a, b = before.get(key), after.get(key)
        if a and b is not None and b < a * (1 - limit):
            flagged.add(after["date"])
    return flagged


def render(job: str, out: JobDir, max_drop: float) -> str:
    rows = collect(out)
    runs = history.runs(out)
    failures = [r for r in runs if r.status == "failed"][-20:]
    metric_keys = ["merged", "popular_baseline", "backtest"] + sorted(
        {k for r in rows for k in r if k.startswith("source_")})
    row_keys = sorted({k for r in rows for k in r if k.startswith("rows_")})
    flagged = drops(rows, "merged", max_drop) | drops(rows, "rows_u2i", max_drop)
    k = next((r["k"] for r in reversed(rows) if r.get("k")), "K")
    parts = [f"<!doctype html><meta charset='utf-8'><title>recall report: {html.escape(job)}</title>",
             "<style>body{font:14px sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
             "tr.drop td{background:#fdd}td:first-child{text-align:left}</style>",
             f"<h1>recall report: {html.escape(job)}</h1>",
             f"<p>{len(rows)} published date(s) under <code>{html.escape(str(out.root))}</code>; generated "
             f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. Rows in red: merged recall or "
             f"u2i rows fell more than {max_drop:.0%} from the date before.</p>"]
    if rows:
        parts.append(f"<img alt='recall' src='{chart(rows, metric_keys, f'holdout recall@{k}', 'recall')}'>")
        parts.append(f"<img alt='rows' src='{chart(rows, row_keys, 'rows per table', 'rows')}'>")
        cols = ["date", *metric_keys, "choosing", "fixed_default", "blend", "coverage", *row_keys, "seconds",
                "skip_gate"]
        parts.append("<h2>Published dates</h2><table><tr>" + "".join(
            f"<th>{html.escape(c.removeprefix('source_'))}</th>" for c in cols) + "</tr>")
        for r in reversed(rows):
            cls = " class='drop'" if r["date"] in flagged else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>Nothing published yet.</p>")
    if failures:
        parts.append("<h2>Recent failures</h2><table><tr><th>date</th><th>started</th><th>exit</th><th>error</th></tr>")
        for f in reversed(failures):
            parts.append(f"<tr><td>{fmt(f.date)}</td><td>{fmt(f.started)}</td>"
                         f"<td>{fmt(f.exit_code)}</td><td style='text-align:left'>{fmt(f.error)}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return html.escape(str(value))


def write(job: str, out: JobDir, target: Path, max_drop: float) -> Path:
    write_atomic(target, render(job, out, max_drop))
    return target
