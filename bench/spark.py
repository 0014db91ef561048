"""`python -m bench.spark [--size reference] [--masters local[1],local[2]]`: the Spark engine against
the local engine on the same generated log and spec, step by step.

Each configuration runs in a fresh process (one JVM per master, no warm JIT carried over; a
local[N] master pinned to N cores with its whole process tree): the
engine's own steps in the nightly run's order (prepare, train, u2i, i2i, popular, then seal and
publish), timed by the run's Timer. Printed: wall time per step, the Spark engine's speed-up from
one core to two, and its ratio to the local engine, step by step; written as JSON too.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import gen
from bench.measure import cpu_model, machine_busy
from bench.spec import write_job

RUN_DATE = dt.date(2026, 11, 20)
STEPS = ("prepare", "train", "u2i", "i2i", "popular", "publish")
CLOCK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and every live process under it (the JVM, the Python workers), with
    what the children they reaped used: how much of the machine this run took, whatever else ran."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    total, frontier = 0, [root]
    while frontier:
        total += sum(stats[p][1] for p in frontier if p in stats)
        frontier = [p for p, (ppid, _) in stats.items() if ppid in frontier]
    return total / CLOCK


def tree_timer():
    """A Timer whose steps also record the CPU seconds of the whole process tree."""
    from contextlib import contextmanager

    from recall.timer import Timer

    class TreeTimer(Timer):
        tree: dict

        @contextmanager
        def step(self, name: str, quiet: bool = False):
            full = ".".join([*self._open, name])
            start = tree_cpu(os.getpid())
            try:
                with super().step(name, quiet):
                    yield
            finally:
                self.tree[full] = round(self.tree.get(full, 0.0) + tree_cpu(os.getpid()) - start, 2)

    timer = TreeTimer()
    timer.tree = {}
    return timer


def one(engine: str, master: str, size: str, factors: int, iterations: int, threads: int, k: int, work: Path) -> dict:
    """One configuration, in this process: the engine's steps, timed."""
    from recall import engines
    from recall.engines.spark.session import local_cores
    from recall.ingest.window import Window
    from recall.jobs import load_job
    from recall.sources import spec_blend
    from recall.store.commit import Publication
    from recall.store.layout import JobDir
    from recall.store.records import Manifest, TableInfo
    shape = gen.SIZES[size]
    root = work.resolve() / size
    tag = f"{engine}-{master.replace('[', '').replace(']', '')}"
    spec_path = root / f"bench-{tag}.toml"
    out = root / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    write_job(spec_path, "bench_spark", shape.days, root / "log", {
        "job.engine": engine, "model.factors": factors, "model.iterations": iterations, "model.threads": threads,
        "recall.u2i.k": k, "recall.u2i.search": "exact", "recall.u2i.sources": ["als"], "evaluate.holdout_days": 0,
        "output.path": out, "log.dir": root / "logs", "spark.master": master})
    spec = load_job(spec_path)
    cores = local_cores(master)
    if engine == "spark" and cores and cores < len(os.sched_getaffinity(0)):
        # local[N] on N cores: the driver, the JVM and the Python workers inherit the affinity, so
        # "one core" is one core (a local[1] JVM otherwise also runs its threads on the other)
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    job = JobDir(out / spec.name)
    job.root.mkdir(parents=True, exist_ok=True)
    publication = Publication(job, "bench-" + time.strftime("%Y%m%dT%H%M%S"), RUN_DATE.isoformat())
    window = Window(RUN_DATE, spec.job.lookback_days, spec.job.timezone)
    timer, how = tree_timer(), spec_blend(spec)
    busy0, total0 = machine_busy()
    start = time.perf_counter()
    with timer.step("start"):
        engine_ = engines.create(spec, root, threads)
    with engine_:
        with timer.step("prepare"):
            data = engine_.prepare(window, timer)
        with timer.step("train"):
            model = engine_.fit(data, how, timer)
        search = engine_.write_tables(model, how, publication, timer)
        with timer.step("publish"):
            tables = {name: publication.seal(name) for name in ("u2i", "i2i", "popular")}
            manifest = Manifest(job=spec.name, date=publication.date, run_id=publication.run_id, engine=engine,
                                search=search, tables={n: TableInfo(m.rows, m.files) for n, m in tables.items()},
                                timings=timer.timings)
            publication.publish(manifest, spec.output.keep_days)
        stats = engine_.input_stats(data)
    wall = time.perf_counter() - start
    busy1, total1 = machine_busy()
    return {"engine": engine, "master": master, "wall_s": round(wall, 2), "steps": timer.timings,
            "cpu_s": timer.tree,
            "rows": {n: m.rows for n, m in tables.items()}, "users": stats.users, "items": stats.items,
            "interactions": stats.interactions, "rows_read": stats.rows,
            # cores the whole machine kept busy meanwhile (this run's JVM and workers included)
            "machine_busy_cores": round((busy1 - busy0) / max(total1 - total0, 1e-9) * (os.cpu_count() or 1), 2)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def report(results: list[dict]) -> tuple[str, dict]:
    local = next((r for r in results if r["engine"] == "local"), None)
    spark = {r["master"]: r for r in results if r["engine"] == "spark"}
    names = [("local", local)] + [(f"spark {m}", r) for m, r in spark.items()]
    rows = [["wall s", *[n for n, r in names if r]]]
    for step in ("start", *STEPS):
        rows.append([step, *[f"{r['steps'].get(step, 0):.1f}" for _, r in names if r]])
    rows.append(["total", *[f"{r['wall_s']:.1f}" for _, r in names if r]])
    rows.append(["", *["" for _, r in names if r]])
    for step in ("prepare", "train", "u2i", "i2i"):
        rows.append([f"{step}: cpu s (cores)", *[f"{r['cpu_s'].get(step, 0):.1f} ({r['cpu_s'].get(step, 0) / max(r['steps'].get(step, 0), 1e-9):.2f})" for _, r in names if r]])
    rows.append(["machine busy (cores)", *[f"{r['machine_busy_cores']:.2f}" for _, r in names if r]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) for row in rows]
    summary: dict = {}
    one_core, two = spark.get("local[1]"), spark.get("local[2]")
    if one_core and two:
        summary["speedup_1_to_2_cores"] = {s: ratio(one_core["steps"].get(s), two["steps"].get(s))
                                           for s in ("prepare", "train", "u2i", "i2i")}
        summary["speedup_1_to_2_cores"]["total"] = ratio(one_core["wall_s"], two["wall_s"])
    if local and two:
        summary["spark_local2_over_local"] = {s: ratio(two["steps"].get(s), local["steps"].get(s))
                                              for s in ("prepare", "train", "u2i", "i2i", "publish")}
        summary["spark_local2_over_local"]["total"] = ratio(two["wall_s"], local["wall_s"])
    lines += ["", f"speed-up of the Spark engine from local[1] to local[2]: {summary.get('speedup_1_to_2_cores')}",
              f"Spark local[2] time / local engine time: {summary.get('spark_local2_over_local')}"]
    return "\n".join(lines), summary


# The cluster the sizing model is for (README, "Sizing a cluster"): 100M users x 10M items x 10B
# interactions, and a cluster of 50 executors of 8 cores.
TARGET = {"users": 100e6, "items": 10e6, "rows": 10e9, "pairs": 9e9, "executors": 50, "cores": 8,
          "probe_share": 0.05}


def sizing(one_core: dict, iterations: int, factors: int, k: int) -> dict:
    """Per-row costs measured on local[1] (wall seconds there are core-seconds), scaled to TARGET.

    prepare: per input row. ALS: per unit of its work, 2 nnz f^2 (each rating's outer product, both
    half-steps) + (users + items) f^3 / 3 (a Cholesky per row), per iteration. u2i: per user x item
    scored (exact search; on the target an IVF search scoring `probe_share` of the items), the
    blend, the check and the writing included. The item side: what the kernel holds per item.
    """
    t, st = TARGET, one_core["steps"]
    users, items, pairs = one_core["users"], one_core["items"], one_core["interactions"]
    rows_read = one_core["rows_read"]
    als_work = iterations * (2 * pairs * factors**2 + (users + items) * factors**3 / 3)
    per = {"prepare_per_row": st["prepare"] / rows_read,
           "als_per_unit": st.get("train.als_fit", st["train"]) / als_work,
           "u2i_per_user_item": st["u2i"] / (users * items),
           "u2i_rows_per_core_s": one_core["rows"]["u2i"] / st["u2i"]}
    cores = t["executors"] * t["cores"]
    target_als = iterations * (2 * t["pairs"] * factors**2 + (t["users"] + t["items"]) * factors**3 / 3)
    core_s = {"prepare": per["prepare_per_row"] * t["rows"],
              "als": per["als_per_unit"] * target_als,
              "u2i": per["u2i_per_user_item"] * t["users"] * t["items"] * t["probe_share"]}
    side_gb = t["items"] * (factors * 4 + 50 * 12 + 2 * 12 + 1) / 2**30  # index vectors, neighbours, rankings
    return {"per_row": {k_: float(f"{v:.3g}") for k_, v in per.items()},
            "target": t, "cores": cores,
            "core_hours": {k_: round(v / 3600, 1) for k_, v in core_s.items()},
            "wall_minutes_on_cluster": {k_: round(v / cores / 60, 1) for k_, v in core_s.items()},
            "item_side_gb": round(side_gb, 1),
            "ratings_gb": round(t["pairs"] * 12 / 2**30, 1),
            "factors_gb": round((t["users"] + t["items"]) * factors * 4 / 2**30, 1),
            "u2i_rows": t["users"] * k}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spark", description=__doc__)
    p.add_argument("--size", choices=sorted(gen.SIZES), default="reference")
    p.add_argument("--masters", default="local[1],local[2]", help="Spark masters to run, comma-separated")
    p.add_argument("--no-local", action="store_true", help="skip the local engine")
    p.add_argument("--threads", type=int, default=2, help="the local engine's threads (and the driver's)")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("data/bench"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--one", nargs=2, metavar=("ENGINE", "MASTER"), help=argparse.SUPPRESS)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.size, a.factors, a.iterations, a.threads, a.k, a.work)))
        return 0
    gen.generate(a.work.resolve() / a.size / "log", RUN_DATE, gen.SIZES[a.size])
    configs = ([] if a.no_local else [("local", "local")]) + [("spark", m) for m in a.masters.split(",") if m]
    results = []
    for engine, master in configs:
        cmd = [sys.executable, "-m", "bench.spark", "--size", a.size, "--threads", str(a.threads), "--factors",
               str(a.factors), "--iterations", str(a.iterations), "-k", str(a.k), "--work", str(a.work),
               "--one", engine, master]
        print(f"running {engine} {master}...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    text, summary = report(results)
    one_core = next((r for r in results if r["master"] == "local[1]"), None)
    if one_core:
        summary["sizing"] = sizing(one_core, a.iterations, a.factors, a.k)
    shape = results[0]
    print(f"size {a.size}: {shape['users']} users x {shape['items']} items, {shape['interactions']} interactions; "
          f"{a.factors} factors, {a.iterations} iterations, k {a.k}, sources [als], exact search; {cpu_model()}")
    print(text)
    if "sizing" in summary:
        print(f"sizing model (per-row costs on local[1], scaled): {json.dumps(summary['sizing'], indent=1)}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = a.json or Path("bench/results") / f"spark-{a.size}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results, "summary": summary}, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
