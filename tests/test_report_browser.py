"""`recall report` looked at in a real headless Chromium (Debian's `chromium`; `.ci/run` installs
it): the page a person opens loads its charts, fits a laptop screen without sideways scrolling,
says what every column means, and shows what an on-call person looks for (NDCG, hit rate, input
and bad rows, the gate and its thresholds, run ids, forced reruns, failures) in a form they read
at a glance. The charts' layout is checked on the figures themselves."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from recall.ops import report
from tests.support.cli import run_cli
from tests.support.files import history, manifest, out_dir
from tests.support.project import TINY_SPEC, spec_text, tiny_project, write_spec

END = dt.date(2026, 11, 10)
DATES = ["2026-11-07", "2026-11-08", "2026-11-09", "2026-11-10"]
WIDTH = 1280  # a laptop screen

MEASURE = """
<script>
window.addEventListener("load", () => {
  const text = el => el.textContent.replace(/\\s+/g, " ").trim();
  const out = {
    viewport: window.innerWidth,
    page: document.documentElement.scrollWidth,
    images: [...document.images].map(i => ({alt: i.alt, natural: i.naturalWidth, shown: i.getBoundingClientRect().width})),
    tables: [...document.querySelectorAll("table")].map(t => ({
      needs: t.getBoundingClientRect().width, room: t.parentElement.clientWidth,
      headers: [...t.querySelectorAll("th")].map(th => ({text: text(th), title: th.title})),
      rows: [...t.querySelectorAll("tr")].slice(1).map(tr => [...tr.children].map(text))})),
    glossary: [...document.querySelectorAll("dt")].map(text),
  };
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is needed for the report test: apt-get install chromium (.ci/run does)"
    return found


def browse(page: Path, profile: Path, *how: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `page`: nothing fetched, nothing synced, a throwaway profile."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", f"--window-size={WIDTH},2400", *how, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, Path]:
    """A job with four published dates (metrics, backtests), one forced rerun past a failing gate,
    and one failed run; its report."""
    root = tmp_path_factory.mktemp("report") / "project"
    tiny_project(root, END, days=8)
    write_spec(root, "tiny", text=spec_text(dict(TINY_SPEC, holdout_days=1)))
    assert run_cli(root, "backfill", "tiny", "--from", DATES[0], "--to", DATES[-1]).returncode == 0
    assert run_cli(root, "run", "tiny", "--date", DATES[1], "--force", "--skip-gate",
                   "--set", "gate.min_rows=1000000").returncode == 0
    assert run_cli(root, "run", "tiny", "--date", "2026-11-11").returncode == 3
    page = root / "report.html"
    res = run_cli(root, "report", "tiny", "--out", str(page))
    assert res.returncode == 0, res.stderr
    return root, page


def test_the_report_reads_well_in_a_real_browser(reported, tmp_path):
    root, page = reported
    out = out_dir(root, "tiny")
    shot = tmp_path / "report.png"
    res = browse(page, tmp_path / "profile", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", res.stderr
    probe = tmp_path / "probe.html"  # the page as it is, plus a script that measures it once loaded
    probe.write_text(page.read_text().replace("\n</html>", MEASURE + "\n</html>"))
    res = browse(probe, tmp_path / "profile", "--dump-dom")
    assert res.returncode == 0, res.stderr
    found = json.loads(html.unescape(re.search(r'<pre id="measured">(.*?)</pre>', res.stdout, re.S).group(1)))

    assert found["page"] <= found["viewport"], "the page scrolls sideways"
    for table in found["tables"]:
        assert table["needs"] <= table["room"] + 1, f"a table is wider than the page: {table['headers']}"
    # the charts load, and each shows one thing: the holdout, the backtest, the rows per table
    alts = [i["alt"] for i in found["images"]]
    assert len(alts) == 3 and all(i["natural"] > 0 and i["shown"] > 0 for i in found["images"]), found["images"]
    assert alts[0] == ("holdout recall@10 by date: published lists (merged), als, ease, item_based, popular, "
                       "recent_popular, popular baseline")
    assert "backtest" not in alts[0] and alts[1] == "backtest recall@10 by date"
    assert alts[2] == "rows per table by date: u2i, i2i, popular"
    # every column says what it means, in its header and in the glossary
    quality, per_source, runs, failures = found["tables"]
    for table in (quality, per_source, runs):
        for header in table["headers"]:
            assert header["title"], f"column {header['text']!r} is not explained"
            assert header["text"] in found["glossary"], header["text"]
    assert [h["text"] for h in quality["headers"]][:7] == [
        "date", "recall@10", "NDCG@10", "hit rate@10", "coverage", "popular baseline", "backtest"]
    assert [h["text"] for h in per_source["headers"]] == ["date", "als", "ease", "item_based", "popular", "recent_popular"]
    assert [h["text"] for h in runs["headers"]] == [
        "date", "run id", "published (UTC)", "forced", "quality gate", "input rows", "bad rows", "users × items",
        "u2i rows", "i2i rows", "popular rows", "run time"]
    # one row per published date, newest first, with its run, input, gate and a readable time
    assert [r[0] for r in runs["rows"]] == DATES[::-1] == [r[0] for r in quality["rows"]]
    for row in runs["rows"]:
        m = manifest(out, row[0])
        assert row[1] == m["run_id"]
        assert row[3] == ("yes" if m["forced"] else "no")
        assert row[5] == f"{m['input']['rows']:,}" and row[6] == f"{m['input']['bad_rows']:,}"
        assert re.fullmatch(r"\d+\.\d s", row[-1]), row[-1]  # seconds, not 5.1000
    assert runs["rows"][2][4] == "skipped (min_rows failed)" and runs["rows"][2][3] == "yes"
    assert {r[4] for i, r in enumerate(runs["rows"]) if i != 2} == {"passed"}
    for row in quality["rows"]:
        m = manifest(out, row[0])
        assert row[1:4] == [f"{m['metrics']['merged'][key]:.4f}" for key in ("recall", "ndcg", "hit_rate")]
    assert not {"True", "False", "nan", "None"} & {cell for r in quality["rows"] + runs["rows"] for cell in r}
    # the gate's thresholds and the failure, whole
    text = page.read_text()
    assert "Quality gate of the job spec: min_recall 0, max_recall_drop 50% (relative to the previous published " \
           "date), min_coverage 0, min_rows 1." in text
    failed = history(root, "tiny")[-1]
    assert failures["rows"] == [["2026-11-11", failed["started"].replace("T", " ")[:19], "3 (input)",
                                 failed["run_id"], failed["error"]]]


def test_the_charts_keep_their_legend_off_the_lines_and_each_table_on_its_own_scale():
    rows = [{"date": f"2026-11-0{d}", "merged": 0.3 + d / 100, "baseline": 0.2, "source:als": 0.31,
             "rows:u2i": 2_000_000 + d, "rows:i2i": 250_000, "rows:popular": 200} for d in range(1, 6)]
    plt = report.pyplot()
    line, _ = report.line_figure(rows, [("merged", "merged"), ("source:als", "als"), ("baseline", "baseline")], "t", "y")
    tables = report.rows_figure(rows, ["u2i", "i2i", "popular"])
    ax = line.axes[0]
    line.canvas.draw()
    legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= plot.x1, "the legend sits on the plot"
    assert [a.get_title() for a in tables.axes] == ["u2i rows", "i2i rows", "popular rows"]
    tops = [a.get_ylim()[1] for a in tables.axes]
    assert tops[0] > 2_000_000 and tops[2] < 1000, tops  # the popular table is not flattened against u2i
    plt.close("all")
