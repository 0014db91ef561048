"""`python -m bench.quality`: the published u2i table of a job's default spec against peer methods,
on public logs split into a training and a test part, all in one run.

Only the training part is given to the pipeline (the real CLI, `recall run`, with the data set's
job spec from jobs/), the published u2i table is read back, and recall@K = hits / min(K, |test|)
is computed over test users known in training, relevant items being those each user had not
interacted with in training. The peers, run on the same split in the same script, are what a
user would otherwise write: popularity, 7-day popularity, implicit ALS on raw weights and on BM25
weights, and implicit's BM25 item-kNN, each with implicit's `recommend` filtering seen items.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recall.samples import datasets

K = 100
US_PER_DAY = 86_400 * 1_000_000
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Split:
    name: str
    test: Callable[[pd.DataFrame], np.ndarray]  # rows of the log -> mask of the test part


def user_last(fraction: float) -> Callable[[pd.DataFrame], np.ndarray]:
    """Each user's last `fraction` of rows by time (users with two rows or more)."""
    def mask(log: pd.DataFrame) -> np.ndarray:
        order = log.sort_values(["user_id", "ts"], kind="stable")
        pos = order.groupby("user_id").cumcount().to_numpy()
        size = order.groupby("user_id")["user_id"].transform("size").to_numpy()
        test = (size >= 2) & (pos >= size - np.floor(size * fraction))
        out = np.zeros(len(log), bool)
        out[order.index.to_numpy()] = test
        return out
    return mask


def last_days(fraction: float) -> Callable[[pd.DataFrame], np.ndarray]:
    """The last `fraction` of the log's time span."""
    def mask(log: pd.DataFrame) -> np.ndarray:
        lo, hi = log["ts"].min(), log["ts"].max()
        return (log["ts"] >= hi - (hi - lo) * fraction).to_numpy()
    return mask


def user_random(fraction: float, seed: int) -> Callable[[pd.DataFrame], np.ndarray]:
    """A seeded random `fraction` of each user's rows."""
    def mask(log: pd.DataFrame) -> np.ndarray:
        key = np.random.default_rng(seed).random(len(log))
        frame = pd.DataFrame({"u": log["user_id"].to_numpy(), "k": key})
        rank = frame.groupby("u")["k"].rank(method="first").to_numpy()
        size = frame.groupby("u")["u"].transform("size").to_numpy()
        return (size >= 2) & (rank > size - np.floor(size * fraction))
    return mask


SPLITS = {  # the splits first, then one more of our own per log
    "movielens": [Split("each user's last 20% by time", user_last(0.2)),
                  Split("the last 10% of the days", last_days(0.1))],
    "movietweetings": [Split("the last tenth of its days", last_days(0.1)),
                       Split("each user's last 20% by time", user_last(0.2))],
    "lastfm": [Split("random 20% per user (seed 42)", user_random(0.2, 42)),
               Split("random 20% per user (seed 7)", user_random(0.2, 7))],
}


def load(name: str) -> pd.DataFrame:
    table = datasets.LOADERS[name](datasets.locate() / datasets.FOLDERS[name])
    log = table.to_pandas()
    if "ts" in log:
        log["ts"] = log["ts"].dt.as_unit("us").astype("int64")
    else:  # no time: the log order stands in for it (only the random split uses this log)
        log["ts"] = np.arange(len(log), dtype=np.int64)
    return log


# --- scoring -------------------------------------------------------------------------


def recall_at_k(lists: dict, train: pd.DataFrame, test: pd.DataFrame, k: int = K) -> float:
    """Mean hits / min(k, |relevant|) over test users known in training."""
    known = set(train["user_id"])
    seen = train.groupby("user_id")["item_id"].agg(set)
    total, users = 0.0, 0
    for user, items in test.groupby("user_id")["item_id"]:
        if user not in known:
            continue
        relevant = set(items) - seen[user]
        if not relevant:
            continue
        got = set(lists.get(user, [])[:k])
        total += len(got & relevant) / min(k, len(relevant))
        users += 1
    return total / users if users else 0.0


# --- the pipeline --------------------------------------------------------------------


def default_spec(name: str) -> str:
    """The data set's job spec as it is in jobs/ (its window, input and evaluation split), without
    any section pasted in from `recall tune` (those follow a `# --- tuned` line)."""
    return (REPO / "jobs" / f"{name}.toml").read_text().split("# --- tuned")[0]


def run_pipeline(name: str, train: pd.DataFrame, work: Path, overrides: list[str]) -> tuple[dict, dict, float]:
    """`recall run` on the training part; the published lists (user -> items by rank), the
    manifest, and the run's wall time."""
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "jobs").mkdir(parents=True)
    data = train.copy()
    has_time = name != "lastfm"
    if has_time:
        data["ts"] = pd.to_datetime(data["ts"], unit="us", utc=True)
    else:
        data = data.drop(columns="ts")
    path = root / "data" / "datasets" / name / "ratings.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), path)
    (root / "jobs" / f"{name}.toml").write_text(default_spec(name))
    date = pd.to_datetime(train["ts"].max(), unit="us", utc=True).date().isoformat() if has_time else "2011-05-01"
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "recall", "--root", str(root), "run", name, "--date", date,
                          "--skip-gate", *[a for o in overrides for a in ("--set", o)]],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"recall run {name} failed ({res.returncode}): {res.stderr[-2000:]}")
    out = root / "data" / "recall" / name
    manifest = json.loads((out / "_manifest" / f"dt={date}.json").read_text())
    u2i = ds.dataset(out / "u2i" / f"dt={date}", format="parquet").to_table().to_pandas()
    lists = u2i.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].agg(list).to_dict()
    return lists, manifest, seconds


# --- the peers -----------------------------------------------------------------------


def matrix(train: pd.DataFrame, weights: np.ndarray) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    users, items = pd.Index(np.unique(train["user_id"])), pd.Index(np.unique(train["item_id"]))
    m = sp.csr_matrix((weights, (users.get_indexer(train["user_id"]), items.get_indexer(train["item_id"]))),
                      shape=(len(users), len(items)))
    m.sum_duplicates()
    return m.astype(np.float32), users, items


def ranked(scores: pd.Series, train: pd.DataFrame, users) -> dict:
    """The same global ranking for every user, their seen items skipped."""
    order = scores.sort_values(ascending=False, kind="stable").index.tolist()
    seen = train.groupby("user_id")["item_id"].agg(set)
    return {u: [i for i in order if i not in seen[u]][:K] for u in users}


def implicit_lists(model, user_items: sp.csr_matrix, users: pd.Index, items: pd.Index, wanted) -> dict:
    rows = users.get_indexer(list(wanted))
    rows = rows[rows >= 0]
    ids, _ = model.recommend(rows, user_items[rows], N=K, filter_already_liked_items=True)
    return {users[r]: [items[i] for i in row if i >= 0] for r, row in zip(rows, ids)}


def peers(train: pd.DataFrame, test: pd.DataFrame, has_time: bool) -> dict[str, float]:
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import BM25Recommender, bm25_weight

    wanted = set(test["user_id"]) & set(train["user_id"])
    out = {}
    pairs = train.drop_duplicates(["user_id", "item_id"])
    out["popularity"] = recall_at_k(ranked(pairs.groupby("item_id").size(), train, wanted), train, test)
    if has_time:
        recent = pairs[pairs["ts"] >= train["ts"].max() - 7 * US_PER_DAY]
        out["7-day popularity"] = recall_at_k(ranked(recent.groupby("item_id").size(), train, wanted), train, test)
    weights = train["weight"].to_numpy(np.float64) if "weight" in train else np.ones(len(train))
    raw, users, items = matrix(train, weights)
    with threadpool_limits(1, "blas"):
        for label, user_items in (("implicit ALS (raw)", raw),
                                  ("implicit ALS (BM25)", bm25_weight(raw.T.tocoo(), K1=100, B=0.8).T.tocsr())):
            model = AlternatingLeastSquares(factors=64, random_state=0, num_threads=2)
            model.fit(user_items.astype(np.float32), show_progress=False)
            out[label] = recall_at_k(implicit_lists(model, raw, users, items, wanted), train, test)
        knn = BM25Recommender(K=100, num_threads=2)
        knn.fit(raw, show_progress=False)
        out["BM25 item-kNN"] = recall_at_k(implicit_lists(knn, raw, users, items, wanted), train, test)
    return out


# --- the run -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=list(SPLITS), help="data sets (default: all)")
    p.add_argument("--work", type=Path, default=REPO / "data" / "bench" / "quality")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a spec key of the pipeline's run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    for name in args.names:
        log = load(name)
        for split in SPLITS[name]:
            test_mask = split.test(log)
            train, test = log[~test_mask].reset_index(drop=True), log[test_mask].reset_index(drop=True)
            lists, manifest, seconds = run_pipeline(name, train, args.work, args.set)
            ours = recall_at_k(lists, train, test)
            theirs = peers(train, test, name != "lastfm")
            best = max(theirs, key=theirs.get)
            metrics = manifest.get("metrics") or {}
            rows.append({"log": name, "split": split.name, "published": round(ours, 4),
                         "best peer": best, "best peer recall": round(theirs[best], 4),
                         "ratio": round(ours / theirs[best], 3),
                         "vs popularity": round(ours / theirs["popularity"], 3),
                         "peers": {k: round(v, 4) for k, v in theirs.items()},
                         "blend": manifest.get("blend"), "holdout": metrics, "run_s": round(seconds, 1)})
            print(f"{name} / {split.name}: published {ours:.4f}; best peer {best} {theirs[best]:.4f} "
                  f"(ratio {ours / theirs[best]:.3f}); peers "
                  + ", ".join(f"{k} {v:.4f}" for k, v in theirs.items()) + f"; run {seconds:.1f}s", flush=True)
    print("\n| log | split | published u2i | best single peer | ratio | vs popularity |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['log']} | {r['split']} | {r['published']:.3f} | {r['best peer']} {r['best peer recall']:.3f} "
              f"| {r['ratio']:.3f} | {r['vs popularity']:.3f} |")
    target = args.json or RESULTS / f"quality-{time.strftime('%Y%m%dT%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(f"\nwrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
