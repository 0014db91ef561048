"""`python -m bench.nearline --size small|reference [--users 10000] [--runs 3]`: a nearline refresh
of the users active since the nightly run, end to end, against what the nightly kernel gives them.

1. Publishes the size's generated log (bench/gen.py, cached under --work) through the CLI,
   `recall run` of its last day, once (then reused): the default sources, all five, blended with
   the default weights, k = 100, exact search.
2. Lands the next day's first hours after the window: `--users` distinct users drawn by the log's
   own activity (so heavy users are the likelier), each with 1 to 5 interactions in their taste
   cluster; a few are users the window never saw.
3. Runs `recall nearline` through the CLI `--runs` times (`--force`: each a full refresh), timing
   each process from start to exit; prints the refresh's own step timings, and the CPU other
   processes used meanwhile (the machine is shared).
4. Checks every refreshed list against the reference (bench/nearline_reference.py): the window
   extended to the new day, read, weighted and ordered by the nightly run's own code, each user
   solved against the published item factors by the fold-in's least squares and, as a second
   opinion, by implicit's own `recalculate_user`, then `recommend()`: the share of identical
   lists (items in order), and the overlap.
5. Prints one user's list before (nightly) and after (the overlay), with what they did.
Bounded: fixed counts; results in bench/results/nearline-SIZE-TIME.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench import gen
from bench.measure import machine_busy
from bench.nearline_reference import expected_lists
from bench.run import RUN_DATE
from bench.spec import write_job
from recall.jobs import find_job
from recall.sources import NAMES
from recall.store import item_side
from recall.store.layout import ITEM_SIDE, JobDir
from recall.store.overlay import read_fresh_manifest
from recall.store.reader import read_table

NEXT = RUN_DATE + dt.timedelta(days=1)
def prepare(size: str, work: Path) -> Path:
    """The project folder: the generated log's days hard-linked under log/, the nightly run of
    RUN_DATE published through the CLI (once, then reused)."""
    root = (work / "nearline" / size).resolve()
    cached = (work / size / "log").resolve()
    spec = gen.SIZES[size]
    gen.generate(cached, RUN_DATE, spec)
    for day in sorted(cached.glob("dt=*")):
        target = root / "log" / day.name
        if not target.exists():
            target.mkdir(parents=True)
            for part in day.glob("*.parquet"):
                os.link(part, target / part.name)
    write_job(root / "jobs" / f"{size}.toml", size, spec.days, "log", {
        "recall.u2i.blend": "weighted",  # every source, default weights: the refresh's heaviest kernel
        "evaluate.holdout_days": 0, "output.path": "out", "output.keep_days": 3,
        "nearline.schedule": "*/5 * * * *"})
    if not (root / "out" / size / "_LATEST").exists():
        print(f"publishing {size} for {RUN_DATE} (recall run)...", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "recall", "--root", str(root), "run", size, "--date",
                        RUN_DATE.isoformat()], check=True)
        print(f"published in {time.perf_counter() - started:.0f}s", flush=True)
    return root


def land_active(root: Path, size: str, users: int, seed: int = 1) -> pa.Table:
    """The next day's first six hours: `users` distinct users (by the log's activity), 1 to 5
    interactions each in their taste cluster, a twentieth of them new to the job."""
    path = root / "log" / f"dt={NEXT.isoformat()}" / "part-00000.parquet"
    marker = path.with_name("_LANDED")
    if marker.exists() and json.loads(marker.read_text()) == {"users": users, "seed": seed, "version": 2}:
        return pq.read_table(path)
    world = gen.PowerLaw(gen.SIZES[size])
    rng = np.random.default_rng([seed, NEXT.toordinal()])
    known = users - users // 20
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < known:
        for u in world.users(rng, 4 * known).tolist():
            if u not in seen:
                seen.add(u)
                picked.append(u)
                if len(picked) == known:
                    break
    chosen = np.array(picked, np.int64)
    counts = rng.integers(1, 6, chosen.size)
    who = np.repeat(chosen, counts)
    items = world.items_for(rng, who)
    ids = world.user_ids[who]
    fresh_users = 9_000_000_000 + np.arange(users - known, dtype=np.int64)  # never in the window
    fresh_items = world.items_for(rng, world.users(rng, fresh_users.size))
    ids, items = np.concatenate([ids, fresh_users]), np.concatenate([items, fresh_items])
    start = int(dt.datetime.combine(NEXT, dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    ts = start + rng.integers(0, 6 * 3600 * 1_000_000, ids.size)  # each row its own moment of the morning
    events = np.searchsorted(np.cumsum(gen.EVENT_P), rng.random(ids.size))
    table = pa.table({"user_id": pa.array(ids), "item_id": pa.array(world.item_ids[items]),
                      "event": pa.array(np.array(gen.EVENTS, dtype=object)[events], pa.string()),
                      "ts": pa.array(ts, pa.timestamp("us", tz="UTC"))})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    marker.write_text(json.dumps({"users": users, "seed": seed, "version": 2}))
    return table


def refresh(root: Path, size: str) -> tuple[float, float, str]:
    """One `recall nearline --force` process: its wall seconds, the cores other processes used
    meanwhile, and its stdout."""
    busy0, total0 = machine_busy()
    ours0 = os.times()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recall", "--root", str(root), "nearline", size, "--force"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    busy1, total1 = machine_busy()
    ours1 = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"recall nearline failed (exit {done.returncode}): {done.stderr.strip()}")
    refresh_cpu = (ours1.children_user + ours1.children_system) - (ours0.children_user + ours0.children_system)
    cores = (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)
    return wall, max(0.0, cores - refresh_cpu / wall), done.stdout.strip()


def agreement(fresh: pa.Table, expected, item_ids: pa.Array) -> dict:
    """Identical lists (items in rank order) and item overlap of the overlay against `expected`."""
    ids = item_ids.to_numpy(zero_copy_only=False)
    got = {u: g for u, g in fresh.to_pandas().groupby("user_id", sort=False)["item_id"]}
    identical, hits, total = 0, 0, 0
    for user, row in zip(expected.users.to_pylist(), expected.items):
        want = ids[row[row >= 0]]
        mine = got[user].to_numpy()
        identical += int(mine.size == want.size and (mine == want).all())
        hits += np.intersect1d(mine, want).size
        total += want.size
    return {"users": len(expected.users), "identical_lists": identical, "identical_share": identical / len(expected.users),
            "item_overlap": hits / total}


def story(root: Path, size: str, landed: pa.Table, k: int = 10) -> dict:
    """A refreshed user with a modest history (10 to 30 window rows) and 3 or more new rows:
    what they did after the window, their list before and after."""
    out = root / "out"
    fresh = read_table(size, "u2i_fresh", output=out)
    nightly = read_table(size, "u2i", output=out, fresh=False)
    i2i = read_table(size, "i2i", output=out)
    frame = landed.to_pandas()
    per_user = frame.groupby("user_id").size()
    candidates = sorted(set(per_user[per_user >= 3].index) & set(fresh["user_id"]) & set(nightly["user_id"]))
    window = ds.dataset(root / "log", format="parquet",
                        partitioning=ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")).to_table(
        columns=["user_id"], filter=(pc.field("dt") <= RUN_DATE.isoformat()) & pc.field("user_id").isin(candidates))
    history = window["user_id"].value_counts().to_pylist()
    modest = sorted(h["values"] for h in history if 10 <= h["counts"] <= 30)
    user = (modest or candidates)[len(modest or candidates) // 2]
    rows_before = next(h["counts"] for h in history if h["values"] == user)
    new = frame[frame["user_id"] == user].sort_values("ts")
    related = set(i2i.loc[i2i["item_id"].isin(new["item_id"]), "similar_item_id"])

    def rows(table) -> list[str]:
        mine = table[table["user_id"] == user].head(k)
        return [f"{r.rank:>3} {r.item_id} {r.source:<14} {r.score:.4f}" + (" *" if r.item_id in related else "")
                for r in mine.itertuples()]

    return {"user": int(user), "window_rows": int(rows_before),
            "new": [f"{r.ts:%H:%M} {r.event} {r.item_id}" for r in new.itertuples()],
            "before": rows(nightly), "after": rows(fresh),
            "related_in_list": [int(len(set(t.loc[t["user_id"] == user, "item_id"]) & related)) for t in (nightly, fresh)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nearline", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("small", "reference"), default="small")
    p.add_argument("--users", type=int, default=10_000, help="distinct users active after the window")
    p.add_argument("--runs", type=int, default=3, help="refreshes timed (each a full one, --force)")
    p.add_argument("--check-users", type=int, default=0, help="users checked against the reference (0: all)")
    p.add_argument("--work", type=Path, default=Path("data/bench"))
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    root = prepare(a.size, a.work)
    landed = land_active(root, a.size, a.users)
    runs = []
    for _ in range(a.runs):
        wall, others, said = refresh(root, a.size)
        runs.append({"wall_s": round(wall, 3), "other_cores": round(others, 2)})
        print(f"refresh: {wall:.2f}s end to end (other processes used {others:.2f} cores meanwhile)", flush=True)
    job = JobDir(root / "out" / a.size)
    date = RUN_DATE.isoformat()
    m = read_fresh_manifest(job, date)
    spec = find_job(a.size, root)
    published = item_side.load(job.partition(ITEM_SIDE, date))
    fresh = read_table(a.size, "u2i_fresh", output=root / "out")
    users = pa.array(sorted(set(fresh["user_id"])))
    if a.check_users:
        users = users.take(pa.array(np.random.default_rng(0).choice(len(users), min(a.check_users, len(users)),
                                                                     replace=False)))
        users = users.take(pc.sort_indices(users))
    fresh_t = pa.Table.from_pandas(fresh[fresh["user_id"].isin(users.to_pylist())], preserve_index=False)
    checks = {}
    for solver in ("foldin", "implicit"):
        started = time.perf_counter()
        expected = expected_lists(spec, root, date, NEXT.isoformat(), published, users, solver, threads=2)
        checks[solver] = {**agreement(fresh_t, expected, published.item_ids),
                          "seconds": round(time.perf_counter() - started, 1)}
        sources = [NAMES[c] for c in expected.source[expected.source >= 0]]
        checks[solver]["sources"] = {n: sources.count(n) for n in sorted(set(sources))}
    example = story(root, a.size, landed)
    result = {"size": a.size, "users_landed": a.users, "rows_landed": landed.num_rows, "runs": runs,
              "manifest": {"users": m.users, "users_refreshed": m.users_refreshed, "input": {
                  k: v for k, v in m.input.items() if k != "files"}, "rows": m.rows, "timings": m.timings,
                  "cutoff": m.cutoff, "threads": m.threads},
              "agreement": checks, "example": example, "cpus": os.cpu_count()}
    print(report(result))
    path = a.json or Path("bench/results") / f"nearline-{a.size}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


def report(r: dict) -> str:
    m, walls = r["manifest"], [run["wall_s"] for run in r["runs"]]
    top = {k: v for k, v in m["timings"].items() if "." not in k or k.startswith("read")}
    lines = [
        f"nearline refresh, size {r['size']}: {m['users_refreshed']:,} users refreshed ({m['users']['active']:,} active, "
        f"{m['users']['new']:,} new to the window, {m['users']['without_known_items']} without a known item) from "
        f"{m['input']['rows']:,} rows after the window and {m['input']['history_rows']:,} window rows of theirs; "
        f"u2i_fresh {m['rows']:,} rows; {m['threads']} threads",
        f"end to end (process start to exit), {len(walls)} runs: " + ", ".join(f"{w:.2f}s" for w in walls)
        + f"; best {min(walls):.2f}s, median {float(np.median(walls)):.2f}s; other processes' cores: "
        + ", ".join(str(run["other_cores"]) for run in r["runs"]),
        "inside the last run: " + ", ".join(f"{k} {v:.2f}s" for k, v in top.items()),
    ]
    for solver, c in r["agreement"].items():
        lines.append(f"vs the nightly kernel with the item side fixed ({solver} solve): {c['identical_lists']:,} of "
                     f"{c['users']:,} lists identical ({c['identical_share']:.2%}), item overlap {c['item_overlap']:.4%}")
    ex = r["example"]
    lines += [f"\nuser {ex['user']} ({ex['window_rows']} rows in the window); after it: " + "; ".join(ex["new"]),
              f"  top 10 before (nightly) | after (u2i_fresh); * = an i2i neighbour of a new item "
              f"({ex['related_in_list'][0]} -> {ex['related_in_list'][1]} of them in the whole list)"]
    lines += [f"  {b:<40} | {f}" for b, f in zip(ex["before"], ex["after"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
