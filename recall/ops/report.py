"""`recall report`: one self-contained HTML page about a job's published dates: the latest run at
a glance, charts of the holdout quality, the backtest and the rows of each table (each on a
scale of its own), a table of quality and a table of runs (input, bad rows, gate, run id,
forced), recent failures, and what every column means.

Everything comes from the job folder (manifests and the run history), read without writing.
The charts are PNGs embedded in the page (matplotlib); the page loads nothing from anywhere.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
from dataclasses import dataclass
from pathlib import Path

from recall.spec.sections import GateSection
from recall.store import history
from recall.store.atomic import write_atomic
from recall.store.layout import TABLES, JobDir
from recall.store.records import Manifest, RunRecord
from recall.store.state import published_dates, read_manifest

EXIT_MEANING = {1: "internal error", 2: "spec or command line", 3: "input", 4: "quality gate", 5: "output",
                75: "job already running", 129: "SIGHUP", 130: "interrupted (SIGINT)", 143: "SIGTERM"}
SOURCE_TEXT = {
    "als": "top-k inner product over the ALS item factors",
    "item_based": "neighbours of the user's recent items",
    "recent_popular": "items most users took up lately",
    "popular": "most users over the window",
    "ease": "EASE, the closed-form item-item model over the most popular items",
}


@dataclass(frozen=True)
class Column:
    key: str
    title: str  # the header
    meaning: str  # the header's title attribute and the glossary entry
    kind: str = "text"  # text, recall, count, seconds, flag, date


def columns_quality(k: int | str, sources: list[str]) -> list[Column]:
    cols = [
        Column("date", "date", "The run date: its tables hold recommendations made from the window of days up to "
                               "and including it.", "date"),
        Column("merged", f"recall@{k}", f"Holdout recall@{k} of the published u2i lists (every source merged by the "
                                        "blend, topped up from popular): held-out items found in a user's list, over "
                                        f"min({k}, items held out), averaged over users.", "recall"),
        Column("ndcg", f"NDCG@{k}", f"Holdout NDCG@{k} of the published lists: like recall, but a hit counts more "
                                    "the higher it is ranked (1 is every held-out item on top).", "recall"),
        Column("hit_rate", f"hit rate@{k}", f"Share of holdout users with at least one held-out item in their "
                                            f"top {k}.", "recall"),
        Column("coverage", "coverage", "Share of the catalogue that appears in some user's published list.", "recall"),
        Column("baseline", "popular baseline", f"Holdout recall@{k} of recommending the most popular items to "
                                               "everyone: the bar the published lists must clear.", "recall"),
        Column("backtest", "backtest", f"Recall@{k} of the u2i table published for the previous date, scored against "
                                       "what its users did after that date: what downstream actually got.", "recall"),
        Column("choosing", "choosing users", f"With blend = auto: recall@{k} of the chosen blend on the holdout users "
                                             "it was chosen on (optimistic; every other figure is on the other users).",
               "recall"),
        Column("fixed_default", "fixed default", f"With blend = auto: recall@{k} the fixed default weights (als 1, "
                                                 "item_based 0.5, recent_popular 0.25) would have scored.", "recall"),
        Column("blend", "blend", "The sources the published lists blend, with their weights, and where the blend "
                                 "came from (chosen on the holdout, kept from an earlier run, or the spec's).", "note"),
    ]
    return cols


def columns_sources(k: int | str, sources: list[str]) -> list[Column]:
    """The date and each source alone: a table of its own, so neither table outgrows the page."""
    return [columns_quality(k, sources)[0]] + [
        Column(f"source:{name}", html.escape(name), f"Holdout recall@{k} of the {name} source alone ("
               + SOURCE_TEXT.get(name, "a source of the blend") + ").", "recall") for name in sources]


def columns_runs(tables: list[str]) -> list[Column]:
    cols = [
        Column("date", "date", "The run date.", "date"),
        Column("run_id", "run id", "The run that published the date (its records in the job's log and history "
                                   "carry it).", "text"),
        Column("published_at", "published (UTC)", "When the date was published.", "text"),
        Column("forced", "forced", "Published by a rerun with --force, replacing an earlier run of the date.", "flag"),
        Column("gate", "quality gate", "The quality gate's verdict: passed, or the checks that failed and were let "
                                       "through with --skip-gate.", "note"),
        Column("input_rows", "input rows", "Rows of the interaction log read for the window.", "count"),
        Column("bad_rows", "bad rows", "Rows dropped as invalid (null ids, bad times or weights, unknown events, "
                                       "exact duplicates), below input.max_bad_fraction.", "count"),
        Column("size", "users &times; items", "Distinct users and items in the window.", "size"),
    ]
    cols += [Column(f"rows:{t}", f"{t} rows", f"Rows of the published {t} table.", "count") for t in tables]
    cols.append(Column("seconds", "run time", "Wall time of the run's steps, from reading to publishing.", "seconds"))
    return cols


def collect(out: JobDir) -> list[dict]:
    """One row per published date, oldest first, flattened from its manifest."""
    rows = []
    for date in published_dates(out):
        m = read_manifest(out, date)
        if m is not None:
            rows.append(flatten(m))
    return rows


def flatten(m: Manifest) -> dict:
    gate = m.gate or {}
    failed = [c.get("check") for c in gate.get("checks", []) if not c.get("passed", True)]
    row = {"date": m.date, "run_id": m.run_id, "forced": m.forced, "seconds": m.duration_s,
           "published_at": m.published_at.replace("T", " ")[:16] if m.published_at else None,
           "gate": ("skipped (" + ", ".join(failed) + " failed)" if failed and m.skip_gate
                    else "passed" if gate.get("checks") else None),
           "input_rows": m.input.get("rows"), "bad_rows": m.input.get("bad_rows"),
           "size": (m.input.get("users"), m.input.get("items")) if m.input.get("users") is not None else None,
           "gate_checks": gate.get("checks", [])}
    for table, count in m.rows.items():
        row[f"rows:{table}"] = count
    if m.metrics is not None:
        merged = m.metrics.merged
        row.update(k=m.metrics.k, merged=merged.recall, ndcg=merged.ndcg, hit_rate=merged.hit_rate,
                   coverage=merged.coverage, baseline=m.metrics.popular_baseline.recall)
        for name, scores in m.metrics.sources.items():
            row[f"source:{name}"] = scores.recall
        if m.metrics.choosing is not None:
            row.update(choosing=m.metrics.choosing.recall, fixed_default=m.metrics.fixed_default.recall)
    if m.backtest and "recall" in m.backtest:
        row["backtest"] = m.backtest["recall"]
    if m.blend:
        row["blend"] = (", ".join(f"{n} {w:g}" for n, w in m.blend.get("weights", {}).items()) or m.blend.get("mode", "")) \
            + (f" ({m.blend_source})" if m.blend_source else "")
    return row


# --- charts ----------------------------------------------------------------------------------


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def date_axis(ax, dates: list[dt.date]) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if len(dates) == 1:
        ax.set_xlim(dates[0] - dt.timedelta(days=1), dates[0] + dt.timedelta(days=1))
    ax.grid(alpha=0.3)


def line_chart(rows: list[dict], series: list[tuple[str, str]], title: str, ylabel: str) -> tuple[str, list[str]]:
    """The PNG of `line_figure`, and the labels it shows."""
    fig, shown = line_figure(rows, series, title, ylabel)
    return png(fig), shown


def line_figure(rows: list[dict], series: list[tuple[str, str]], title: str, ylabel: str):
    """Lines of `series` ((key, label)) over the dates, the legend outside the plot; the merged
    list drawn thick and on top, the popular baseline dashed. Returns the figure and its labels."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.4), dpi=100)
    dates = [dt.date.fromisoformat(r["date"]) for r in rows]
    shown = []
    for key, label in series:
        values = [r.get(key) for r in rows]
        if all(v is None for v in values):
            continue
        style = {"linewidth": 1.4, "marker": "o", "markersize": 3, "zorder": 2}
        if key == "merged":
            style.update(linewidth=2.8, color="black", zorder=3)
        elif key == "baseline":
            style.update(linestyle="--", color="grey")
        ax.plot(dates, [float("nan") if v is None else v for v in values], label=label, **style)
        shown.append(label)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    date_axis(ax, dates)
    if shown:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)
    return fig, shown


def rows_chart(rows: list[dict], tables: list[str]) -> str:
    return png(rows_figure(rows, tables))


def rows_figure(rows: list[dict], tables: list[str]):
    """One panel per table, each on its own scale: their sizes differ by orders of magnitude."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(tables), figsize=(10, 2.8), dpi=100, squeeze=False)
    dates = [dt.date.fromisoformat(r["date"]) for r in rows]
    for ax, table in zip(axes[0], tables):
        values = [r.get(f"rows:{table}") for r in rows]
        ax.plot(dates, [float("nan") if v is None else v for v in values], marker="o", markersize=3)
        ax.set_title(f"{table} rows")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_ylim(bottom=0, top=max([v for v in values if v is not None] or [1]) * 1.15)
        date_axis(ax, dates)
    fig.tight_layout()
    return fig


# --- the page --------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1220px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#555}.summary{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px;margin:12px 0}
.summary div{background:#f5f5f7;border-radius:6px;padding:8px 10px}.summary b{display:block;font-size:16px}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{border:1px solid #d0d0d5;padding:3px 7px;text-align:right;white-space:nowrap;font-size:13px}
th{background:#f0f0f3;cursor:help}td.text,th.text{text-align:left}td.wrap{white-space:normal;text-align:left}
td.note{white-space:normal;min-width:5em;max-width:9em}
tr.drop td{background:#fde2e2}tr.drop td:first-child::after{content:" \\25BC drop";color:#b00020;font-size:12px}
figure{margin:12px 0}figure img{max-width:100%;height:auto}figcaption{color:#555;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}dt{font-weight:600}dd{margin:0}
code{font-size:13px}
"""


def css(kind: str) -> str:
    return {"text": "text", "date": "text", "note": "text note"}.get(kind, "num")


def cell(value, kind: str) -> str:
    if value is None:
        return "&ndash;"
    if kind == "recall":
        return f"{value:.4f}"
    if kind == "count":
        return f"{value:,}"
    if kind == "seconds":
        return f"{value:.1f}&nbsp;s"
    if kind == "flag":
        return "yes" if value else "no"
    if kind == "size":
        return f"{value[0]:,} &times; {value[1]:,}"
    return html.escape(str(value))


def table_html(rows: list[dict], cols: list[Column], flagged: set[str], caption: str) -> str:
    head = "".join(f"<th class='{css(c.kind)}' title='{html.escape(c.meaning)}'>"
                   f"{c.title}</th>" for c in cols)
    body = []
    for r in reversed(rows):
        cls = " class='drop'" if r["date"] in flagged else ""
        body.append(f"<tr{cls}>" + "".join(
            f"<td class='{css(c.kind)}'>{cell(r.get(c.key), c.kind)}</td>"
            for c in cols) + "</tr>")
    return (f"<div class='scroll'><table><caption class='muted' style='text-align:left'>{caption}</caption>"
            f"<tr>{head}</tr>" + "".join(body) + "</table></div>")


def drops(rows: list[dict], key: str, limit: float) -> set[str]:
    """Dates whose `key` fell more than `limit` (relative) from the date before."""
    flagged = set()
    for before, after in zip(rows, rows[1:]):
        a, b = before.get(key), after.get(key)
        if a and b is not None and b < a * (1 - limit):
            flagged.add(after["date"])
    return flagged


def gate_text(gate: GateSection) -> str:
    return (f"min_recall {gate.min_recall:g}, max_recall_drop {gate.max_recall_drop:.0%} (relative to the previous "
            f"published date), min_coverage {gate.min_coverage:g}, min_rows {gate.min_rows:,}")


def summary(latest: dict, failures: list[RunRecord]) -> str:
    k = latest.get("k", "k")
    items = [
        ("latest date", latest["date"]),
        ("published (UTC)", latest.get("published_at") or "&ndash;"),
        ("run id", f"<code>{html.escape(latest['run_id'])}</code>"),
        (f"recall@{k}", cell(latest.get("merged"), "recall")
         + (f" <span class='muted'>(baseline {cell(latest.get('baseline'), 'recall')})</span>"
            if latest.get("baseline") is not None else "")),
        ("backtest", cell(latest.get("backtest"), "recall")),
        ("u2i rows", cell(latest.get("rows:u2i"), "count")),
        ("input rows / bad", f"{cell(latest.get('input_rows'), 'count')} / {cell(latest.get('bad_rows'), 'count')}"),
        ("quality gate", cell(latest.get("gate"), "text") + (" (forced rerun)" if latest.get("forced") else "")),
    ]
    last_failure = failures[-1] if failures else None
    if last_failure:
        items.append(("last failure", f"{html.escape(last_failure.date)} exit {last_failure.exit_code}"))
    return "<div class='summary'>" + "".join(f"<div><span class='muted'>{a}</span><b>{b}</b></div>"
                                              for a, b in items) + "</div>"


def render(job: str, out: JobDir, gate: GateSection) -> str:
    rows = collect(out)
    failures = [r for r in history.runs(out) if r.exit_code != 0][-20:]
    now = dt.datetime.now(dt.timezone.utc)
    sources = sorted({k.split(":", 1)[1] for r in rows for k in r if k.startswith("source:")})
    tables = [t for t in TABLES if any(f"rows:{t}" in r for r in rows)]
    k = next((r["k"] for r in reversed(rows) if r.get("k")), "k")
    flagged = drops(rows, "merged", gate.max_recall_drop) | drops(rows, "rows:u2i", gate.max_recall_drop)
    parts = [f"<!doctype html><html lang='en'><meta charset='utf-8'><title>recall report: {html.escape(job)}</title>",
             f"<style>{STYLE}</style>",
             f"<h1>recall report: {html.escape(job)}</h1>",
             f"<p class='muted'>{len(rows)} published date(s) under <code>{html.escape(str(out.root))}</code>; "
             f"generated {now.strftime('%Y-%m-%d %H:%M')} UTC.</p>"]
    if rows:
        parts.append(summary(rows[-1], failures))
        holdout, shown = line_chart(rows, [("merged", "published lists (merged)"),
                                           *[(f"source:{s}", s) for s in sources],
                                           ("baseline", "popular baseline")],
                                    f"Holdout recall@{k}: the published lists, each source alone, the popularity "
                                    "baseline", f"recall@{k}")
        parts.append("<h2>Quality</h2>")
        parts.append(f"<figure><img alt='holdout recall@{k} by date: {html.escape(', '.join(shown))}' "
                     f"src='{holdout}'><figcaption>Each run holds out the last part of its window, trains on the "
                     "rest and scores its lists on what users did in the held-out part.</figcaption></figure>")
        if any(r.get("backtest") is not None for r in rows):
            backtest, _ = line_chart(rows, [("backtest", "backtest")],
                                     f"Backtest recall@{k}: the previous date's u2i table against what its users "
                                     "did next", f"recall@{k}")
            parts.append(f"<figure><img alt='backtest recall@{k} by date' src='{backtest}'><figcaption>Scored on "
                         "real behaviour after the table was published, so it lags the holdout by a "
                         "day.</figcaption></figure>")
        parts.append(table_html(rows, columns_quality(k, sources), flagged,
                                f"Rows marked <b>drop</b>: recall@{k} or u2i rows fell more than "
                                f"{gate.max_recall_drop:.0%} from the date before. Hover a header for its meaning."))
        if sources:
            parts.append(table_html(rows, columns_sources(k, sources), set(),
                                    f"Each source alone on the same holdout users: recall@{k} of its own list."))
        parts.append("<h2>Runs</h2>")
        parts.append(f"<figure><img alt='rows per table by date: {html.escape(', '.join(tables))}' "
                     f"src='{rows_chart(rows, tables)}'><figcaption>Each table on its own scale: their sizes "
                     "differ by orders of magnitude.</figcaption></figure>")
        parts.append(f"<p>Quality gate of the job spec: {gate_text(gate)}.</p>")
        parts.append(table_html(rows, columns_runs(tables), set(), "One row per published date, newest first."))
    else:
        parts.append("<p>Nothing published yet.</p>")
    if failures:
        parts.append("<h2>Recent failures</h2><div class='scroll'><table><tr><th class='text'>date</th>"
                     "<th class='text'>started (UTC)</th><th>exit</th><th class='text'>run id</th>"
                     "<th class='text'>what happened</th></tr>")
        for f in reversed(failures):
            started = f.started.replace("T", " ")[:19] if f.started else None
            meaning = EXIT_MEANING.get(f.exit_code, "")
            parts.append(f"<tr><td class='text'>{cell(f.date, 'text')}</td><td class='text'>{cell(started, 'text')}</td>"
                         f"<td>{f.exit_code}{' (' + meaning + ')' if meaning else ''}</td>"
                         f"<td class='text'><code>{cell(f.run_id, 'text')}</code></td>"
                         f"<td class='wrap'>{cell(f.error or None, 'text')}</td></tr>")
        parts.append("</table></div>")
    if rows:
        glossary = {c.title: c.meaning for c in columns_quality(k, sources) + columns_sources(k, sources)
                    + columns_runs(tables)}
        parts.append("<h2>What the columns mean</h2><dl>" + "".join(
            f"<dt>{t}</dt><dd>{html.escape(m)}</dd>" for t, m in glossary.items()) + "</dl>")
    return "\n".join(parts) + "\n</html>\n"


def write(job: str, out: JobDir, target: Path, gate: GateSection) -> Path:
    write_atomic(target, render(job, out, gate))
    return target
