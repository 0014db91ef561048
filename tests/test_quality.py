"""Evaluation, the quality gate, the backtest, tuning and the report."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recall.spec.sections import EvaluateSection
from recall.evaluate.metrics import Relevant, ranking_metrics
from recall.evaluate.split import holdout_split, last_fraction
from recall.ingest.prepare import encode
from recall.model.matrix import US_PER_DAY
from recall.ingest.validate import CleanLog
from tests.support.project import RUN_DATE

DATE = RUN_DATE.isoformat()


def inter_of(users, items, ts=None):
    n = len(users)
    return encode(CleanLog(pa.array(users, pa.int64()), pa.array(items, pa.int64()),
                           None if ts is None else np.asarray(ts, np.int64), np.ones(n)))


def test_recall_is_hits_over_min_k_relevant_and_ndcg_is_one_for_a_perfect_list():
    relevant = Relevant(np.array([0, 0, 0, 1]), np.array([3, 4, -1, 2]))
    users = np.array([0, 1])
    lists = np.array([[3, 4], [5, 6]])
    m = ranking_metrics(lists, users, relevant, n_items=10, k=2)
    # user 0: 2 hits of min(2, 3 relevant) -> 1.0; user 1: 0 of 1 -> 0.0
    assert m.recall == 0.5 and m.hit_rate == 0.5 and m.users == 2
    assert m.ndcg == pytest.approx(0.5)
    assert m.coverage == pytest.approx(4 / 10)


def test_temporal_split_holds_out_the_last_days_and_drops_items_seen_in_training():
    end = 10 * US_PER_DAY
    # user 1 saw item 10 on day 2 and again on day 9: not a fresh item, not relevant
    inter = inter_of([1, 1, 1, 2, 2], [10, 11, 10, 10, 12],
                     [2 * US_PER_DAY, 3 * US_PER_DAY, 9 * US_PER_DAY + 5, 1 * US_PER_DAY, 9 * US_PER_DAY + 7])
    split = holdout_split(inter, EvaluateSection(holdout_days=1), end)
    assert split.cutoff_us == 9 * US_PER_DAY
    items = split.train.items.values.to_pylist()
    pairs = sorted(zip(split.train.users.values.take(pa.array(split.relevant.user)).to_pylist(),
                       [items[i] if i >= 0 else None for i in split.relevant.item]))
    assert pairs == [(2, None)]  # item 12 is new in the holdout: relevant, never a hit


def test_user_fraction_split_takes_each_users_last_rows_by_time():
    inter = inter_of([1] * 5 + [2] * 2, [1, 2, 3, 4, 5, 1, 2], [5, 4, 3, 2, 1, 1, 2])
    mask = last_fraction(inter, 0.4)
    assert mask.tolist() == [True, True, False, False, False, False, False]


def test_random_split_is_seeded():
    inter = inter_of(list(range(10)) * 10, list(range(100)))
    a = holdout_split(inter, EvaluateSection(split="user_random", holdout_fraction=0.3), 0, seed=1)
    b = holdout_split(inter, EvaluateSection(split="user_random", holdout_fraction=0.3), 0, seed=1)
    c = holdout_split(inter, EvaluateSection(split="user_random", holdout_fraction=0.3), 0, seed=2)
    kept = lambda split: split.train.items.values.to_pylist()  # noqa: E731 (what stayed in training)
    assert kept(a) == kept(b) != kept(c)
    assert a.relevant.user.size == 30 and len(kept(a)) == 70


def published(root: Path) -> dict[str, bytes]:
    out = root / "data" / "recall" / "small"
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name not in ("_lock", "_history.jsonl")}


def test_metrics_per_source_and_backtest_land_in_the_manifest(project, cli):
    assert cli(project, "run", "small", "--date", "2026-11-18").returncode == 0
    res = cli(project, "run", "small", "--date", DATE)
    assert res.returncode == 0, res.stderr
    m = json.loads((project / "data/recall/small/_manifest" / f"dt={DATE}.json").read_text())
    metrics = m["metrics"]
    assert set(metrics["sources"]) == {"als", "item_based", "recent_popular", "popular", "ease"}
    for block in (*metrics["sources"].values(), metrics["merged"], metrics["popular_baseline"]):
        assert set(block) >= {"recall", "ndcg", "hit_rate", "coverage", "users"}
    assert metrics["split"].startswith("temporal")
    assert m["timings"]["evaluate"] > 0 and "backtest" in m["timings"]
    bt = m["backtest"]
    assert bt["date"] == "2026-11-18" and 0 < bt["recall"] <= 1 and bt["users"] > 0
    log = (project / "logs" / "small.log").read_text()
    assert "backtest of the u2i served on 2026-11-18" in log and "holdout (temporal" in log


def test_gate_refuses_with_both_numbers_and_skip_gate_publishes_and_is_recorded(project, cli):
    assert cli(project, "run", "small", "--date", "2026-11-19").returncode == 0
    before = published(project)
    res = cli(project, "run", "small", "--date", DATE, "--set", "gate.min_recall=0.99")
    assert res.returncode == 4
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1
    assert re.search(r"min_recall: 0\.\d+ is below the minimum 0\.99", line), line
    assert published(project) == before  # nothing new, the previous date untouched
    assert not (project / "data/recall/small/u2i" / f"dt={DATE}").exists()
    res = cli(project, "run", "small", "--date", DATE, "--set", "gate.min_recall=0.99", "--skip-gate")
    assert res.returncode == 0, res.stderr
    m = json.loads((project / "data/recall/small/_manifest" / f"dt={DATE}.json").read_text())
    assert m["skip_gate"] is True and m["gate"]["skipped"] is True
    assert any(c["check"] == "min_recall" and not c["passed"] for c in m["gate"]["checks"])


def test_gate_relative_drop_against_the_previous_run(project, cli):
    assert cli(project, "run", "small", "--date", "2026-11-19").returncode == 0
    # a model made useless on purpose: one factor, no iterations worth the name
    res = cli(project, "run", "small", "--date", DATE, "--set", "model.factors=1", "--set", "model.iterations=1",
              "--set", 'recall.u2i.sources=["als"]', "--set", "gate.max_recall_drop=0.05")
    assert res.returncode == 4, res.stderr
    assert "max_recall_drop" in res.stderr and "previous run's" in res.stderr


def test_tune_is_deterministic_and_its_settings_merge_into_a_spec_that_has_those_sections(project, cli):
    import tomllib

    args = ("tune", "small", "--date", DATE, "--trials", "2", "--budget", "300", "--seed", "3")
    a, b = cli(project, *args), cli(project, *args)
    assert a.returncode == 0, a.stderr
    strip = lambda text: re.sub(r"\s+\d+\.\d  ", " ", text)  # noqa: E731 (drop the seconds column)
    assert strip(a.stdout) == strip(b.stdout)
    assert a.stdout.count("\nals ") == 2  # two ALS trials
    assert re.search(r"trials scored on \d+ users, the result reported on \d+ others", a.stdout)
    snippet = tomllib.loads(a.stdout.split("(recall tune --apply merges them into it):")[1])
    assert snippet["recall"]["u2i"]["blend"] == "weighted" and snippet["recall"]["u2i"]["weights"]
    # the spec already has [model] and [recall.u2i] (pasting would declare them twice): --apply merges
    spec = project / "jobs" / "small.toml"
    spec.write_text("# my job, hand-written\n" + spec.read_text())
    applied = cli(project, *args, "--apply")
    assert applied.returncode == 0, applied.stderr
    merged = tomllib.loads(spec.read_text())
    assert spec.read_text().startswith("# my job, hand-written\n")
    assert merged["recall"]["u2i"]["k"] == 20 and merged["recall"]["u2i"]["weights"] == snippet["recall"]["u2i"]["weights"]
    assert merged["model"]["threads"] == 1 and merged["model"].items() >= snippet.get("model", {}).items()
    assert cli(project, "check", "small", "--date", DATE).returncode == 0


def test_report_renders_every_published_date(project, cli):
    for date in ("2026-11-18", "2026-11-19", DATE):
        assert cli(project, "run", "small", "--date", date).returncode == 0
    res = cli(project, "report", "small")
    assert res.returncode == 0, res.stderr
    page = (project / "data" / "reports" / "small.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # the holdout, the backtest, the rows per table
    for date in ("2026-11-18", "2026-11-19", DATE):
        assert page.count(f"<td class='text'>{date}</td>") == 3  # in the quality, per-source and runs tables
    assert "published lists (merged)" in page and "popular baseline" in page and "backtest" in page
