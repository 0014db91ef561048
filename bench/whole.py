"""The whole nightly run against the script a user would otherwise write, on the same log.

The script: pandas reads the window, a CSR matrix, implicit's ALS, `recommend` with seen items
filtered for every user, `similar_items` for every item, Parquet out. The pipeline: `recall run`
(the real CLI, a fresh output folder each time) with the benchmark's job spec, for the default
spec and for ALS alone, with the holdout evaluation off and on. Runs are interleaved and the best
of `repeat` is kept for each, so a busy moment of a shared machine does not decide a ratio.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bench import gen
from bench.spec import write_job

EVENT_WEIGHTS = gen.EVENT_WEIGHTS
BATCH = 8192


def script(log: Path, out: Path, k: int, factors: int, iterations: int, threads: int) -> float:
    """What a user would write without the pipeline; returns its wall time."""
    from implicit.cpu.als import AlternatingLeastSquares

    start = time.perf_counter()
    frame = ds.dataset(log, format="parquet", partitioning="hive").to_table(
        columns=["user_id", "item_id", "event"]).to_pandas()
    users, user_ids = pd.factorize(frame["user_id"])
    items, item_ids = pd.factorize(frame["item_id"])
    weights = frame["event"].map(EVENT_WEIGHTS).to_numpy(np.float32)
    matrix = sp.csr_matrix((weights, (users, items)), shape=(len(user_ids), len(item_ids)))
    matrix.sum_duplicates()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, iterations=iterations, random_state=42, num_threads=threads)
        model.fit(matrix, show_progress=False)
        out.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(out / "u2i.parquet", pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()),
                                                              ("score", pa.float32()), ("rank", pa.int32())])) as w:
            for lo in range(0, len(user_ids), BATCH):
                rows = np.arange(lo, min(lo + BATCH, len(user_ids)))
                ids, scores = model.recommend(rows, matrix[rows], N=k, filter_already_liked_items=True)
                w.write_table(pa.table({"user_id": np.repeat(user_ids[rows], ids.shape[1]),
                                        "item_id": item_ids[ids.ravel()], "score": scores.ravel(),
                                        "rank": np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int32), len(rows))}))
        with pq.ParquetWriter(out / "i2i.parquet", pa.schema([("item_id", pa.int64()), ("similar_item_id", pa.int64()),
                                                              ("score", pa.float32()), ("rank", pa.int32())])) as w:
            for lo in range(0, len(item_ids), BATCH):
                rows = np.arange(lo, min(lo + BATCH, len(item_ids)))
                ids, scores = model.similar_items(rows, N=k + 1)
                w.write_table(pa.table({"item_id": np.repeat(item_ids[rows], k + 1), "similar_item_id": item_ids[ids.ravel()],
                                        "score": scores.ravel(),
                                        "rank": np.tile(np.arange(1, k + 2, dtype=np.int32), len(rows))}))
    return time.perf_counter() - start


@dataclass(frozen=True)
class Config:
    label: str
    overrides: tuple[str, ...]


CONFIGS = [
    Config("default spec, holdout off", ("evaluate.holdout_days=0",)),
    Config("default spec, evaluation on", ()),
    Config("ALS alone, holdout off", ("evaluate.holdout_days=0", 'recall.u2i.sources=["als"]')),
    Config("ALS alone, evaluation on", ('recall.u2i.sources=["als"]',)),
]


def pipeline(root: Path, job: str, date: str, overrides: tuple[str, ...]) -> tuple[float, dict]:
    """`recall run` into a fresh output folder; its wall time and the manifest's timings."""
    shutil.rmtree(root / "out", ignore_errors=True)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "recall", "--root", str(root), "run", job, "--date", date,
                          "--skip-gate", *[a for o in overrides for a in ("--set", o)]],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"recall run failed ({res.returncode}): {res.stderr[-2000:]}")
    manifest = json.loads((root / "out" / job / "_manifest" / f"dt={date}.json").read_text())
    return seconds, manifest


def compare(log: Path, work: Path, date: str, days: int, k: int, factors: int, iterations: int, threads: int,
            repeat: int = 2, search: bool = True) -> dict:
    """Interleaved runs of the script and of each pipeline configuration; the best wall time of each."""
    root = work / "whole"
    write_job(root / "jobs" / "whole.toml", "whole", days, log, {
        "model.factors": factors, "model.iterations": iterations, "model.threads": threads,
        "recall.u2i.k": k, "recall.i2i.k": k, "output.path": root / "out", "log.dir": root / "logs",
        "autotune.every_days": 0})  # the settings search (every 7 days by default) is measured as a row of its own
    configs = list(CONFIGS)
    if search:
        configs.append(Config("default spec, evaluation on, settings search due",
                              ("autotune.every_days=7",)))
    best: dict[str, float] = {}
    timings: dict[str, dict] = {}
    for _ in range(repeat):
        seconds = script(log, work / "script-out", k, factors, iterations, threads)
        best["script"] = min(best.get("script", seconds), seconds)
        for config in configs:
            seconds, manifest = pipeline(root, "whole", date, config.overrides)
            if seconds < best.get(config.label, float("inf")):
                best[config.label] = seconds
                timings[config.label] = {"timings": manifest["timings"], "blend": manifest["blend"],
                                         "tuned": manifest.get("tuned")}
    return {"wall_s": {label: round(s, 2) for label, s in best.items()},
            "vs_script": {c.label: round(best[c.label] / best["script"], 3) for c in configs},
            "runs": timings}


def report(result: dict) -> str:
    lines = ["whole run vs the script (pandas, implicit ALS, recommend + similar_items, Parquet), best of the runs:",
             f"  script: {result['wall_s']['script']:.1f}s"]
    for label, ratio in result["vs_script"].items():
        run = result["runs"][label]
        top = {k: v for k, v in run["timings"].items() if "." not in k}
        steps = ", ".join(f"{k} {v:.1f}" for k, v in top.items() if v >= 0.1)
        lines.append(f"  {label}: {result['wall_s'][label]:.1f}s = {ratio:.2f}x the script "
                     f"(blend {', '.join(f'{n} {w:g}' for n, w in run['blend'].get('weights', {}).items()) or run['blend'].get('mode')}; "
                     f"steps {steps})")
    return "\n".join(lines)
