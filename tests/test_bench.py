"""Smoke test of the benchmark harness at its small size: it runs, prints, writes JSON, and its
agreement checks hold (exact u2i equals implicit's recommend ties aside). No timing asserts."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
from tests.support.project import REPO



def test_bench_small_runs_and_agrees_with_the_peers(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--size", "small", "--work", str(tmp_path / "work"),
                           "--json", str(out), "--repeat", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "whole run vs the script" in proc.stdout
    assert "overhead (all but training and search)" in proc.stdout
    assert "vs implicit recommend" in proc.stdout and f"wrote {out}" in proc.stdout
    res = json.loads(out.read_text())
    names = [s["name"] for s in res["steps"]]
    for step in ("prepare", "train", "u2i (exact)", "i2i", "popular", "publish",
                 "u2i (approx)", "peer: implicit recommend", "peer: scoring product",
                 "peer: implicit similar_items"):
        assert step in names
    steps = {s["name"]: s for s in res["steps"]}
    assert steps["u2i (exact)"]["inside"]["als"] > 0 and steps["train"]["inside"]["als_fit"] > 0
    assert set(steps["prepare"]["inside"]) == {"read", "validate", "matrix"}
    assert all(s["peak_rss_mb"] > 0 and s["wall_s"] >= 0 for s in res["steps"])
    whole = res["whole"]
    assert set(whole["vs_script"]) == {"default spec, holdout off", "default spec, evaluation on",
                                       "ALS alone, holdout off", "ALS alone, evaluation on",
                                       "default spec, evaluation on, settings search due"}
    assert all(r > 0 for r in whole["vs_script"].values()) and whole["wall_s"]["script"] > 0
    assert whole["runs"]["default spec, evaluation on, settings search due"]["tuned"]["searched"]
    agree = res["agreement"]
    assert agree["u2i_identical_ties_aside"] == 1.0
    assert agree["u2i_overlap_vs_implicit"] == 1.0
    assert agree["i2i_overlap_vs_implicit"] >= 0.99
    assert agree["approx_in_run_check"]["recall_at_k"] > 0.9
    assert 0 < res["summary"]["overhead_share"] < 1
    # the run published a real u2i table: every user of the log, k rows each
    table = pq.read_table(tmp_path / "work/small/out/bench/u2i/dt=2026-11-20")
    assert table.num_rows == res["shape"]["u2i_rows"] == res["shape"]["users"] * 100


def test_bench_foldin_small_runs_and_the_kernels_agree(tmp_path):
    """bench.foldin at the small size: it prints both kernels' figures, and every list the plain
    kernels give equals the compiled kernels' (items, score bits, sources)."""
    proc = subprocess.run([sys.executable, "-m", "bench.foldin", "--size", "small", "--work", str(tmp_path / "work"),
                           "--histories", "60"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["identical"] == res["histories"] == 60
    assert all(res[name]["p50_ms"] > 0 and res["pss_mb"][name] > 0 for name in ("compiled", "plain"))
    assert res["pss_mb"]["none"] > 0
    assert "identical lists (items, score bits, sources): 60 of 60" in proc.stdout
