"""The run chooses its own blend on its holdout (choosing and reporting users apart), refuses to
publish below the popularity baseline, and searches its settings now and then (issue 10)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recall.samples.synth import SynthSpec, generate
from tests.support.files import manifest, out_dir
from tests.support.project import DATE, RUN_DATE, write_spec

WORLDS = {  # what dominates the log: items trending in and out, or stable tastes
    "trending": SynthSpec(users=1500, items=400, rows_per_day=2500, days=12, clusters=12, seed=11, taste=0.1,
                          trending=0.6),
    "collaborative": SynthSpec(users=1500, items=400, rows_per_day=2500, days=12, clusters=12, seed=11, taste=0.95,
                               trending=0.0),
}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, world in WORLDS.items():
        out[name] = tmp_path_factory.mktemp(name) / "log"
        generate(out[name], RUN_DATE, world)
    return out


def project_of(tmp_path: Path, log: Path) -> Path:
    shutil.copytree(log, tmp_path / "data" / "log")
    write_spec(tmp_path)
    return tmp_path


@pytest.mark.parametrize("world, leader", [("trending", "recent_popular"), ("collaborative", "als")])
def test_auto_weights_what_the_log_rewards(world: str, leader: str, logs, tmp_path, cli):
    root = project_of(tmp_path, logs[world])
    res = cli(root, "run", "small", "--date", DATE)
    assert res.returncode == 0, res.stderr
    m = manifest(out_dir(root))
    blend, metrics = m["blend"], m["metrics"]
    assert m["blend_source"] == "chosen on the holdout"
    assert blend["weights"][leader] == max(blend["weights"].values()), blend
    assert blend["sources"][0] == leader
    # honest numbers: chosen on some users, every figure but `choosing` on the others
    assert metrics["users_choosing"] + metrics["users_reporting"] == metrics["users_evaluated"]
    assert metrics["merged"]["users"] == metrics["users_reporting"] > 0
    assert metrics["choosing"]["users"] == metrics["users_choosing"] > 0
    assert {"fixed_default", "vs_popular"} <= set(metrics)
    # cost follows value: the final fit trains only the sources the blend uses
    trained = {k.split(".")[1] for k in m["timings"] if k.startswith("train.")}
    assert ("item_knn" in trained) == ("item_based" in blend["sources"])
    log = (root / "logs" / "small.log").read_text()
    assert "blend chosen on" in log and f"{leader} " in log
    # the same log, spec and seed choose the same blend
    again = cli(root, "run", "small", "--date", DATE, "--force")
    assert again.returncode == 0 and manifest(out_dir(root))["blend"] == blend


def test_a_merged_list_measurably_below_popularity_is_refused(logs, tmp_path, cli):
    root = project_of(tmp_path, logs["trending"])
    als_only = ["--set", 'recall.u2i.sources=["als"]', "--set", 'recall.u2i.blend="weighted"']
    res = cli(root, "run", "small", "--date", DATE, *als_only)
    assert res.returncode == 4, res.stderr
    line = res.stderr.strip()
    assert "popular_floor" in line and "is measurably below the popular baseline's" in line, line
    assert not (out_dir(root) / "_LATEST").exists()
    res = cli(root, "run", "small", "--date", DATE, *als_only, "--set", "gate.popular_floor=false")
    assert res.returncode == 0, res.stderr
    gap = manifest(out_dir(root))["metrics"]["vs_popular"]  # configured off: measured, not enforced
    assert gap["difference"] + 2 * gap["se"] < 0


def test_without_a_holdout_the_last_chosen_blend_is_kept(logs, tmp_path, cli):
    root = project_of(tmp_path, logs["trending"])
    assert cli(root, "run", "small", "--date", "2026-11-19").returncode == 0
    chosen = manifest(out_dir(root), "2026-11-19")["blend"]
    res = cli(root, "run", "small", "--date", DATE, "--set", "evaluate.holdout_days=0")
    assert res.returncode == 0, res.stderr
    m = manifest(out_dir(root))
    assert m["blend"] == chosen and m["blend_source"] == "kept from 2026-11-19 (no holdout to choose on)"


SEARCH = ["--set", "autotune.every_days=7", "--set", "autotune.trials=2", "--set", "autotune.budget_s=60"]


def test_the_run_searches_its_settings_keeps_them_and_lets_the_spec_win(logs, tmp_path, cli):
    root = project_of(tmp_path / "a", logs["collaborative"])
    res = cli(root, "run", "small", "--date", "2026-11-18", *SEARCH, "--set", "model.alpha=5.0")
    assert res.returncode == 0, res.stderr
    state = json.loads((out_dir(root) / "_tuned.json").read_text())
    assert state["date"] == "2026-11-18" and state["trials"] >= 2 and len(state["users"]) == 2
    tuned = manifest(out_dir(root), "2026-11-18")["tuned"]
    assert tuned["searched"] and tuned["reason"] == "no settings searched yet"
    assert "model.alpha" not in tuned["applied"]  # set in the spec (--set): the spec wins
    # the next run, within every_days: no search, the same settings reused
    res = cli(root, "run", "small", "--date", "2026-11-19", *SEARCH, "--set", "model.alpha=5.0")
    assert res.returncode == 0, res.stderr
    reused = manifest(out_dir(root), "2026-11-19")["tuned"]
    assert not reused["searched"] and reused["from"] == "2026-11-18" and reused["applied"] == tuned["applied"]
    # a backtest that fell since the search starts a new one
    state["backtest_recall"] = 0.99
    (out_dir(root) / "_tuned.json").write_text(json.dumps(state))
    res = cli(root, "run", "small", "--date", DATE, *SEARCH, "--set", "model.alpha=5.0")
    assert res.returncode == 0, res.stderr
    assert manifest(out_dir(root))["tuned"]["reason"].startswith("the backtest fell from 0.9900")
    # the same log, spec and seed search to the same settings
    other = project_of(tmp_path / "b", logs["collaborative"])
    assert cli(other, "run", "small", "--date", "2026-11-18", *SEARCH, "--set", "model.alpha=5.0").returncode == 0
    first = json.loads((out_dir(other) / "_tuned.json").read_text())
    assert first["settings"] == tuned["applied"] == manifest(out_dir(other), "2026-11-18")["tuned"]["applied"]


def test_nothing_measured_nothing_expensive_trained(logs, tmp_path, cli):
    """blend = auto, no holdout, no earlier choice: ALS and recent popularity, nothing else trained."""
    root = project_of(tmp_path, logs["collaborative"])
    res = cli(root, "run", "small", "--date", DATE, "--set", "evaluate.holdout_days=0")
    assert res.returncode == 0, res.stderr
    m = manifest(out_dir(root))
    assert m["blend"]["weights"] == {"als": 1.0, "recent_popular": 0.25}
    assert m["blend_source"] == "als and recent_popular (nothing measured to choose on)"
    trained = {k.split(".")[1] for k in m["timings"] if k.startswith("train.")}
    assert not trained & {"item_knn", "ease"}, trained
