"""`python -m bench --size small|reference|large [--search exact|approx|both]`: run, print, write JSON."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from bench import gen, whole
from bench.run import RUN_DATE, Options, Result, run
from recall.versions import library_versions

RESULTS = Path("bench/results")


def parse(argv: list[str]) -> tuple[Options, Path]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--size", choices=sorted(gen.SIZES), default="small")
    p.add_argument("--search", choices=("exact", "approx", "both"), default=None,
                   help="u2i search mode (default: both, except approx for large)")
    p.add_argument("--threads", type=int, default=2, help="job threads (model.threads); 0 = all cores")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("-k", type=int, default=100, help="u2i k")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                   help="run implicit and the bare product on the same factors (default: yes, except for large)")
    p.add_argument("--work", type=Path, default=Path("data/bench"), help="generated logs and outputs")
    p.add_argument("--json", type=Path, default=None, help=f"result file (default: {RESULTS}/SIZE-TIME.json)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a spec key")
    p.add_argument("--whole", action=argparse.BooleanOptionalAction, default=None,
                   help="also time whole `recall run`s against the script a user would write (default: yes, "
                        "except for large)")
    p.add_argument("--repeat", type=int, default=2, help="whole runs: the best of this many of each")
    a = p.parse_args(argv)
    search = a.search or ("approx" if a.size == "large" else "both")
    opts = Options(size=a.size, search=search, threads=a.threads, factors=a.factors, iterations=a.iterations, k=a.k,
                   peers=a.size != "large" if a.peers is None else a.peers, work=a.work, overrides=a.set,
                   whole=a.size != "large" if a.whole is None else a.whole, repeat=a.repeat)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return opts, a.json or RESULTS / f"{a.size}-{stamp}.json"


def table(res: Result) -> str:
    rows = [("step", "wall s", "cpu s", "peak RSS MB", "inside: wall/cpu s")]
    for s in res.steps:
        inside = ", ".join(f"{k} {v:.2f}/{s['inside_cpu'].get(k, 0):.2f}" for k, v in s["inside"].items())
        rows.append((s["name"], f"{s['wall_s']:.2f}", f"{s['cpu_s']:.2f}", f"{s['peak_rss_mb']:.0f}", inside))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)] + [r[4]]) for r in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines)


def times(pair: dict) -> str:
    return f"{pair['wall']:.2f}s wall / {pair['cpu']:.2f}s cpu"


def ratios(pair: dict) -> str:
    return f"{pair['wall']:.2f}x wall / {pair['cpu']:.2f}x cpu"


def report(res: Result) -> str:
    sh, sm, m = res.shape, res.summary, res.machine
    out = [f"size {res.options['size']}: {sh['users']} users x {sh['items']} items, {sh['interactions']} distinct "
           f"pairs from {sh['rows_read']} rows; k={res.options['k']}, {res.options['factors']} factors, "
           f"{m['cores_used']} threads; other processes used {m['other_load_cores']} of {m['cpus']} cores meanwhile",
           "", table(res), "",
           f"overhead (all but training and search): {sm['overhead_share']:.1%} of the pipeline's "
           f"{sm['pipeline_wall_s']:.1f}s wall",
           f"u2i search: {times(sm['u2i_search_s'])}"]
    if "u2i_search_vs_implicit_recommend" in sm:
        out += [f"  vs implicit recommend: {ratios(sm['u2i_search_vs_implicit_recommend'])} "
                f"(whole u2i step: {ratios(sm['u2i_step_vs_implicit_recommend'])})",
                f"  vs bare scoring product: {ratios(sm['u2i_search_vs_scoring_product'])}",
                f"  product + argpartition, scaled to all users: {times(sm['product_argpartition_scaled_s'])}"]
    if "i2i_search_vs_implicit_similar_items" in sm:
        out.append(f"i2i search: {times(sm['i2i_search_s'])}; vs implicit similar_items: "
                   f"{ratios(sm['i2i_search_vs_implicit_similar_items'])}")
    if "approx_speedup" in sm:
        out.append(f"approx u2i search: {times(sm['u2i_search_approx_s'])}; speed-up over exact: "
                   f"{sm['approx_speedup']['wall']:.2f}x wall / {sm['approx_speedup']['cpu']:.2f}x cpu")
    mem = sm["u2i_peak_rss_increase_mb"]
    out.append("u2i memory, peak RSS above the step's start: " + ", ".join(
        f"{v:.0f} MB for {k}" for k, v in mem.items()) + f" ({sh['users']} users in all)")
    if res.agreement:
        out.append("agreement: " + ", ".join(f"{k} {v}" for k, v in res.agreement.items()))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    opts, path = parse(sys.argv[1:] if argv is None else argv)
    res = run(opts)
    print(report(res))
    if opts.whole:
        size = gen.SIZES[opts.size]
        res.whole = whole.compare(opts.work.resolve() / opts.size / "log", opts.work.resolve() / opts.size,
                                  RUN_DATE.isoformat(), size.days, opts.k, opts.factors, opts.iterations,
                                  opts.threads, opts.repeat)
        print("\n" + whole.report(res.whole))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**vars(res), "libraries": library_versions(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
