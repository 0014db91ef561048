"""`python -m bench.serve --size small|reference|large`: load-test `recall serve` on loopback.

1. Publishes a job on the benchmark's generated log through the CLI (`recall run`; the default
   sources als + item_based + recent_popular, so fold-in runs the full kernel), unless done.
2. Starts `recall serve --workers N` on a free loopback port and waits for it.
3. Lookups: 100-item u2i lists of random known users for `--seconds` from `--connections`
   keep-alive connections (wrk when installed, else an asyncio client over raw sockets):
   throughput, p50, p99.
4. Fold-in: `--foldins` POSTs of real users' histories one at a time: p50, p99.
5. Memory: RSS and PSS of the server's processes against the u2i partition's size on disk plus
   the item side's, after the lookups (every page of u2i they touch) and again after the
   fold-ins (which load the item side and the plain kernels, SciPy's BLAS, into each worker that
   folds in); and PSS as it would be with every page of the built run touched.
6. Reloads under load: `--reloads` new runs of the date are published through the commit
   protocol (the run's files as a new run id: what a forced rerun publishes, without training
   again) while lookups run; every answer must be 200.
Bounded: every phase has a fixed count or duration; the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench import gen
from bench.run import RUN_DATE
from bench.spec import write_job
from recall.store.commit import Publication
from recall.store.layout import ITEM_SIDE, JobDir
from recall.store.records import TableInfo
from recall.store.state import latest, read_manifest

def prepare(size: str, work: Path) -> tuple[Path, JobDir]:
    """The project folder with the published job (generated and run once, then reused)."""
    root = (work / "serve" / size).resolve()
    log = (work / size / "log").resolve()
    spec = gen.SIZES[size]
    gen.generate(log, RUN_DATE, spec)
    write_job(root / "jobs" / f"{size}.toml", size, spec.days, log,
              {"evaluate.holdout_days": 0, "output.path": "out", "output.keep_days": 3})
    job = JobDir(root / "out" / size)
    if latest(job) is None:
        print(f"publishing {size} on {log} (recall run)...", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "recall", "--root", str(root), "run", size, "--date",
                        RUN_DATE.isoformat()], check=True)
        print(f"published in {time.perf_counter() - started:.0f}s", flush=True)
    return root, job


def republish(job: JobDir, date: str, number: int) -> str:
    """Publish the date's run again under a new run id through the commit protocol: the same
    files (hard links), the item side's settings rewritten with the new run id."""
    manifest = read_manifest(job, date)
    run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-bench{number:02d}"
    publication = Publication(job, run_id, date)
    tables = {}
    for table in manifest.tables:
        source, staged = job.partition(table, date), publication.folder(table)
        marker = json.loads((source / "_SUCCESS").read_text())
        for name in marker["files"]:
            if table == ITEM_SIDE and name == "settings.json":
                settings = json.loads((source / name).read_text())
                (staged / name).write_text(json.dumps({**settings, "run_id": run_id}))
            else:
                os.link(source / name, staged / name)
        sealed = publication.seal(table)
        tables[table] = TableInfo(sealed.rows, sealed.files)
    publication.publish(dataclasses.replace(manifest, run_id=run_id, tables=tables), keep_days=3)
    shutil.rmtree(job.staging(run_id), ignore_errors=True)
    return run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: bytes | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
        return json.loads(answer.read())


def start_server(root: Path, job: str, port: int, workers: int) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "recall", "--root", str(root), "serve", job, "--port", str(port),
                               "--workers", str(workers)], stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"recall serve exited {server.returncode}: {server.stderr.read()}")
        try:
            get_json(f"http://127.0.0.1:{port}/healthz")
            return server, time.perf_counter() - started
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("recall serve did not answer within 300s")


def stop_server(server: subprocess.Popen) -> str:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        _, err = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        _, err = server.communicate()
    return err


def process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [p for child in out for p in process_tree(int(child))]


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def mapped_kb(pid: int, under: str) -> tuple[int, dict[str, int]]:
    """(PSS in kB of the process's mappings of files under `under`, {file: its size in kB})."""
    pss, files, current = 0, {}, None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line: range perms offset dev inode [path]
            current = head[5] if len(head) > 5 and head[5].startswith(under) else None
            if current and os.path.exists(current):
                files[current] = os.path.getsize(current) // 1024
        elif current and line.startswith("Pss:"):
            pss += int(head[1])
    return pss, files


def memory(pid: int, disk: int, built: Path) -> dict:
    """RSS and PSS over the server's processes, against u2i + item side on disk (`disk` bytes).

    The workers map the built run (`built`); only the pages they have touched count in PSS. So
    also: PSS as it would be with every page of the built run touched (once: the page cache
    shares them), an upper bound that does not depend on how many users the lookups reached."""
    tree = process_tree(pid)
    mem = [memory_kb(p) for p in tree]
    pss = sum(m[1] for m in mem) / 1024
    maps = [mapped_kb(p, str(built)) for p in tree]
    files = {f: size for _, sizes in maps for f, size in sizes.items()}
    all_touched = pss + (sum(files.values()) - sum(m[0] for m in maps)) / 1024
    return {"processes": len(tree), "rss_mb": sum(m[0] for m in mem) / 1024, "pss_mb": pss,
            "pss_by_process_mb": [round(m[1] / 1024, 1) for m in mem],  # the server first, then its children
            "largest_rss_mb": max(m[0] for m in mem) / 1024, "u2i_plus_item_side_on_disk_mb": disk / 2 ** 20,
            "pss_ratio": pss / (disk / 2 ** 20), "pss_all_pages_touched_mb": all_touched,
            "pss_all_pages_touched_ratio": all_touched / (disk / 2 ** 20)}


HZ = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds over a phase: the whole machine's, the server's (its processes and the builds
    they waited for) and this benchmark's with its load generator; the rest is other people's
    work on a shared machine, which the latencies suffer from."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = self.sample()

    def sample(self) -> tuple[float, float, float, float]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / HZ  # user nice system irq softirq steal
        server = 0.0
        for pid in process_tree(self.server_pid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            server += sum(int(v) for v in stat[11:15]) / HZ  # utime stime cutime cstime
        t = os.times()
        return time.perf_counter(), busy, server, t.user + t.system + t.children_user + t.children_system

    def cores(self) -> dict:
        end = self.sample()
        wall = end[0] - self.start[0]
        busy, server, bench = (end[i] - self.start[i] for i in (1, 2, 3))
        return {"machine_cores": round(busy / wall, 2), "server_cores": round(server / wall, 2),
                "load_generator_cores": round(bench / wall, 2),
                "other_cores": round(max(busy - server - bench, 0) / wall, 2), "server_cpu_s": server}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# --- load generation ------------------------------------------------------------------------


def wrk_lookups(port: int, job: str, users: list, seconds: float, connections: int) -> dict:
    """wrk (C, one thread) with a Lua script cycling through known users."""
    script = Path(f"/tmp/recall-bench-serve-{os.getpid()}.lua")
    ids = ",".join(f'"{u}"' for u in users)
    script.write_text(f"""
local users = {{{ids}}}
local n = #users
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/v1/{job}/u2i/" .. users[(i * 7919) % n + 1] .. "?k=100")
end
done = function(summary, latency, requests)
  io.write(string.format("JSON{{\\"requests\\":%d,\\"seconds\\":%f,\\"p50_us\\":%d,\\"p99_us\\":%d,\\"mean_us\\":%f,"
    .. "\\"non2xx\\":%d,\\"errors\\":%d}}\\n", summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99), latency.mean, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
""")
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script),
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    finally:
        script.unlink(missing_ok=True)
    data = json.loads(out.split("JSON", 1)[1])
    return {"tool": "wrk", "requests": data["requests"], "seconds": data["seconds"],
            "per_s": data["requests"] / data["seconds"], "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000, "failed": data["non2xx"] + data["errors"]}


async def socket_lookups(port: int, job: str, users: list, seconds: float, connections: int) -> dict:
    """An asyncio client over raw keep-alive sockets (when wrk is not installed)."""
    latencies: list[float] = []
    failed = 0
    stop_at = time.perf_counter() + seconds

    async def one_connection(offset: int) -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while time.perf_counter() < stop_at:
            user = users[(i * 7919) % len(users)]
            i += connections
            started = time.perf_counter()
            writer.write(f"GET /v1/{job}/u2i/{user}?k=100 HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            failed += not head.startswith(b"HTTP/1.1 200")
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one_connection(c) for c in range(connections)))
    took = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"tool": "python asyncio client", "requests": len(latencies), "seconds": took,
            "per_s": len(latencies) / took, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "failed": failed}


def lookups(port: int, job: str, users: list, seconds: float, connections: int, tool: str) -> dict:
    if tool == "wrk":
        return wrk_lookups(port, job, users, seconds, connections)
    return asyncio.run(socket_lookups(port, job, users, seconds, connections))


def foldins(port: int, job: str, histories: list[list], count: int) -> dict:
    """`count` fold-ins one after another on one keep-alive connection."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, failed, rows = [], 0, 0
    for i in range(count):
        body = json.dumps({"items": histories[i % len(histories)]})
        started = time.perf_counter()
        conn.request("POST", f"/v1/{job}/u2i", body, {"content-type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        latencies.append(time.perf_counter() - started)
        failed += answer.status != 200
        rows += len(json.loads(data).get("items", [])) if answer.status == 200 else 0
    conn.close()
    ms = np.array(latencies) * 1000
    return {"count": count, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_rows": rows / max(count - failed, 1), "failed": failed}


# --- the run --------------------------------------------------------------------------------


def sample_users_and_histories(root: Path, job: JobDir, date: str, users: int, histories: int, seed: int = 0):
    """Known user ids (from the u2i table) and real users' histories (most recent first, from the log)."""
    u2i = job.partition("u2i", date)
    ids = []  # every user of the table, so the lookups touch all of it (an honest RSS)
    for path in sorted(u2i.glob("part-*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(columns=["user_id"]):
            ids += batch["user_id"].unique().to_pylist()
    ids = sorted(set(ids))
    rng = random.Random(seed)
    chosen = rng.sample(ids, min(users, len(ids)))
    spec_log = Path(tomllib.loads((root / "jobs" / f"{job.name}.toml").read_text())["input"]["path"])
    day = pq.read_table(sorted(spec_log.glob("dt=*/*.parquet"))[-1], columns=["user_id", "item_id", "ts"])
    frame = day.to_pandas().sort_values(["user_id", "ts"], ascending=[True, False])
    groups = [g["item_id"].drop_duplicates().tolist()[:50] for _, g in frame.groupby("user_id") if len(g) >= 3]
    rng.shuffle(groups)
    return chosen, groups[:histories]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("small", "reference", "large"), default="small")
    p.add_argument("--work", type=Path, default=Path("data/bench"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the lookup phase")
    p.add_argument("--foldins", type=int, default=1000)
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    tool = ("wrk" if shutil.which("wrk") else "python") if a.tool == "auto" else a.tool
    root, job = prepare(a.size, a.work)
    date = latest(job)
    users, histories = sample_users_and_histories(root, job, date, 50_000, 200)
    port = free_port()
    server, start_s = start_server(root, job.name, port, a.workers)
    result: dict = {"size": a.size, "workers": a.workers, "connections": a.connections, "tool": tool,
                    "start_s": round(start_s, 2)}
    try:
        lookups(port, job.name, users, 2.0, a.connections, tool)  # warm up (page cache, connections)
        meter = CpuMeter(server.pid)
        result["lookups"] = lookups(port, job.name, users, a.seconds, a.connections, tool)
        result["lookups"]["cpu"] = cpu = meter.cores()
        result["lookups"]["server_cpu_us_per_lookup"] = round(cpu.pop("server_cpu_s") / result["lookups"]["requests"] * 1e6, 1)
        disk = folder_bytes(job.partition("u2i", date)) + folder_bytes(job.partition(ITEM_SIDE, date))
        built = root / "data" / "serve"  # the built runs the workers map
        result["memory_lookups"] = memory(server.pid, disk, built)  # before any fold-in loads the kernel
        meter = CpuMeter(server.pid)
        result["foldin"] = foldins(port, job.name, histories, a.foldins)
        result["foldin"]["cpu"] = meter.cores()
        result["foldin"]["cpu"].pop("server_cpu_s")
        result["memory"] = memory(server.pid, disk, built)
        served = get_json(f"http://127.0.0.1:{port}/healthz")["jobs"][job.name]["run_id"]
        result["memory"]["built_run_mb"] = folder_bytes(root / "data" / "serve" / job.name / served) / 2 ** 20
        if a.reloads:
            result["reloads"] = reloads_under_load(port, job, date, users, a, tool)
    finally:
        err = stop_server(server)
    load_lines = [line for line in err.splitlines() if "loaded" in line]
    result["server_log"] = load_lines[-3:]
    print(report(result))
    path = a.json or Path("bench/results") / f"serve-{a.size}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


# a build at nice 10 (recall.serve.build) on a machine the load keeps busy: ~20 s at the reference
# size, ~60 s at the large one (34 s on a quiet machine)
RELOAD_ESTIMATE_S = {"small": 10.0, "reference": 25.0, "large": 80.0}


def reloads_under_load(port: int, job: JobDir, date: str, users: list, a, tool: str) -> dict:
    """`a.reloads` times: lookups run for a window while a new run is published and waited for
    until it is served; the window is sized from the slowest reload so far (a build at the
    reference size takes seconds), so every swap happens under load."""
    served, seconds_each, phases = [], [], []
    estimate = RELOAD_ESTIMATE_S[a.size]  # the first window's guess; then the slowest reload so far
    for n in range(a.reloads):
        outcome: dict = {}
        window = round(2 * estimate + 3)

        def load_for(seconds: float) -> None:
            try:
                outcome.update(lookups(port, job.name, users, seconds, a.connections, tool))
            except Exception as exc:  # noqa: BLE001 - reported below, as a failure of the phase
                outcome.update(error=f"{type(exc).__name__}: {exc}")

        load = threading.Thread(target=load_for, args=(window,))
        load.start()
        time.sleep(1.0)  # the load is on before the publish
        run_id = republish(job, date, n)
        published = time.perf_counter()
        while get_json(f"http://127.0.0.1:{port}/healthz")["jobs"][job.name]["run_id"] != run_id:
            if time.perf_counter() - published > 120:
                raise RuntimeError(f"run {run_id} was not served within 120s")
            time.sleep(0.05)
        took = time.perf_counter() - published
        load.join()
        if "error" in outcome:
            raise RuntimeError(f"the load during reload {n} failed: {outcome['error']}")
        if took > window - 1:
            raise RuntimeError(f"reload {n} took {took:.1f}s, longer than its load window of {window}s")
        seconds_each.append(round(took, 2))
        served.append(run_id)
        phases.append(outcome)
        estimate = max(estimate if n == 0 else 0, *seconds_each)
    requests = sum(p["requests"] for p in phases)
    return {"reloads": len(served), "publish_to_served_s": seconds_each, "requests": requests,
            "failed": sum(p["failed"] for p in phases), "per_s": requests / sum(p["seconds"] for p in phases),
            "p50_ms": float(np.median([p["p50_ms"] for p in phases])), "p99_ms": max(p["p99_ms"] for p in phases)}


def memory_line(mem: dict) -> str:
    budget = 1.5 * mem["u2i_plus_item_side_on_disk_mb"]
    return (f"{mem['processes']} processes, RSS {mem['rss_mb']:.0f} MB in all (largest {mem['largest_rss_mb']:.0f} MB), "
            f"PSS {mem['pss_mb']:.0f} MB = {mem['pss_ratio']:.2f}x u2i + item side on disk "
            f"({mem['u2i_plus_item_side_on_disk_mb']:.0f} MB; 1.5x is {budget:.0f} MB); PSS by process "
            f"{' + '.join(f'{m:.0f}' for m in mem['pss_by_process_mb'])} MB; with every page of the built run "
            f"touched {mem['pss_all_pages_touched_mb']:.0f} MB = {mem['pss_all_pages_touched_ratio']:.2f}x")


def report(r: dict) -> str:
    lk, fo, mem, rl = r["lookups"], r["foldin"], r["memory"], r.get("reloads")
    return "\n".join([
        f"recall serve, size {r['size']}: {r['workers']} workers, {r['connections']} connections, load by {r['tool']}; "
        f"started and loaded in {r['start_s']:.1f}s",
        f"u2i lookups (k=100): {lk['per_s']:,.0f}/s over {lk['seconds']:.1f}s, p50 {lk['p50_ms']:.3f} ms, "
        f"p99 {lk['p99_ms']:.3f} ms, {lk['failed']} failed; server CPU {lk['server_cpu_us_per_lookup']} us a lookup; "
        f"cores busy: server {lk['cpu']['server_cores']}, load generator {lk['cpu']['load_generator_cores']}, "
        f"other processes {lk['cpu']['other_cores']} (of {os.cpu_count()})",
        f"fold-in (POST, {fo['count']} histories one at a time, {fo['mean_rows']:.0f} rows each): "
        f"p50 {fo['p50_ms']:.2f} ms, p99 {fo['p99_ms']:.2f} ms, {fo['failed']} failed; "
        f"other processes used {fo['cpu']['other_cores']} cores meanwhile",
        f"memory after the lookups (no fold-in yet): {memory_line(r['memory_lookups'])}",
        f"memory after the fold-ins: {memory_line(mem)}; the built run the workers map: {mem['built_run_mb']:.0f} MB",
        f"reloads under load: {rl['reloads']} runs published and served (publish to served: "
        f"{', '.join(map(str, rl['publish_to_served_s']))} s); lookups meanwhile {rl['per_s']:,.0f}/s, "
        f"p50 {rl['p50_ms']:.3f} ms (median of the windows), p99 {rl['p99_ms']:.3f} ms (worst window), "
        f"{rl['failed']} failed of {rl['requests']:,}" if rl else "reloads: none asked for",
    ])


if __name__ == "__main__":
    sys.exit(main())
