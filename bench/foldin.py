"""`python -m bench.foldin --size reference|large`: the fold-in kernel for one user, plain against
compiled, in one process.

On the run `python -m bench.serve` publishes (published first when it is not), with its item
side loaded as the nightly run publishes it: `--histories` random histories of `--items` items,
each folded in (`recall.kernel.foldin`) and answered by `recommend()` as a batch of one, with the
compiled kernels (numba) and with the plain ones (NumPy; what `recall serve` runs), interleaved.
Prints p50 and p99 of each, their ratio, how many lists are identical (items, score bits,
sources), and what a process that folds in weighs with each (PSS of a fresh interpreter that
opens the run as `recall serve` builds it, its item side, and answers 50 fold-ins), against one
that has only opened the run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recall.kernel.backend import plain_kernels
from recall.kernel.foldin import FoldIn, fold_batch
from recall.serve.build import build
from recall.sources.recommend import recommend
from recall.store import item_side
from recall.store.layout import ITEM_SIDE
from recall.store.state import latest, read_manifest


def timed(published, fold: FoldIn, histories: list[np.ndarray], plain: bool) -> tuple[list, np.ndarray]:
    lists, seconds = [], []
    for history in histories:
        started = time.perf_counter()
        batch = fold_batch(fold, [(history, None)], published.recent_items, fold.n_items)
        if plain:
            with plain_kernels():
                merged = recommend(published.side, batch, published.blend, published.k)
        else:
            merged = recommend(published.side, batch, published.blend, published.k)
        seconds.append(time.perf_counter() - started)
        lists.append(merged)
    return lists, np.array(seconds) * 1000


SERVE_LIKE = """
import sys
from pathlib import Path
import numpy as np
from recall.serve.snapshot import Snapshot

model = Snapshot.open(Path(sys.argv[1])).model
if sys.argv[2] != "none":  # "none": the run opened only, as a worker that has not folded in yet
    side, fold, how = model.load()
rng = np.random.default_rng(0)
for _ in range(50 if sys.argv[2] != "none" else 0):
    history = rng.integers(0, side.n_items, 60)
    if sys.argv[2] == "plain":
        model.recommend(history, None, 100)
    else:
        from recall.kernel.foldin import fold_batch
        from recall.sources.recommend import recommend
        recommend(side, fold_batch(fold, [(history, None)], int(model.meta["settings"]["recent_items"]), side.n_items),
                  how, 100)
print(next(int(line.split()[1]) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()
           if line.startswith("Pss:")) / 1024)
"""


def memory_mb(built: Path, kernels: str) -> float:
    """PSS of a fresh interpreter that opens the run as `recall serve` builds it and folds users
    in (the item side, the fold-in, the kernels: plain as a server worker does, or compiled), or
    (`none`) only opens it, importing nothing else."""
    out = subprocess.run([sys.executable, "-c", SERVE_LIKE, str(built), kernels], capture_output=True, text=True,
                         check=True).stdout
    return float(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.foldin", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("small", "reference", "large"), default="reference")
    p.add_argument("--work", type=Path, default=Path("data/bench"))
    p.add_argument("--histories", type=int, default=400)
    p.add_argument("--items", type=int, default=60)
    a = p.parse_args(argv)
    from bench.serve import prepare

    _, job = prepare(a.size, a.work)
    folder = job.partition(ITEM_SIDE, latest(job))
    published = item_side.load(folder)
    fold = FoldIn.of(published.side.factors, published.fold, published.weight_sum)
    rng = np.random.default_rng(1)
    histories = [rng.integers(0, fold.n_items, a.items) for _ in range(a.histories)]
    timed(published, fold, histories[:30], False)  # numba's cache and the pages of the item side
    timed(published, fold, histories[:30], True)
    half = len(histories) // 2
    got = [timed(published, fold, part, plain) for part in (histories[:half], histories[half:]) for plain in (False, True)]
    compiled_lists, plain_lists = got[0][0] + got[2][0], got[1][0] + got[3][0]
    compiled_ms, plain_ms = np.concatenate([got[0][1], got[2][1]]), np.concatenate([got[1][1], got[3][1]])
    same = sum(np.array_equal(c.items, q.items) and np.array_equal(c.scores.view(np.uint32), q.scores.view(np.uint32))
               and np.array_equal(c.source, q.source) for c, q in zip(compiled_lists, plain_lists))
    result = {"size": a.size, "items": fold.n_items, "histories": len(histories), "history_items": a.items,
              "sources": list(published.blend.sources), "search": published.side.parts["als"].mode
              if "als" in published.side.parts else None, "identical": same}
    for name, ms in (("compiled", compiled_ms), ("plain", plain_ms)):
        result[name] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    result["plain_over_compiled_p50"] = result["plain"]["p50_ms"] / result["compiled"]["p50_ms"]
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        build(job, latest(job), read_manifest(job, latest(job)).run_id, built)
        result["pss_mb"] = {name: memory_mb(built, name) for name in ("none", "compiled", "plain")}
    print(f"fold-in kernel, one user at a time, size {a.size} ({fold.n_items:,} items, sources "
          f"{', '.join(result['sources'])}, {result['search']} search; {len(histories)} histories of {a.items} items):")
    for name in ("compiled", "plain"):
        print(f"  {name:8s} p50 {result[name]['p50_ms']:.3f} ms, p99 {result[name]['p99_ms']:.3f} ms; "
              f"a process that folds in: PSS {result['pss_mb'][name]:.0f} MB")
    print(f"  a process that has only opened the run: PSS {result['pss_mb']['none']:.0f} MB")
    print(f"  plain / compiled p50 {result['plain_over_compiled_p50']:.2f}x; identical lists (items, score bits, "
          f"sources): {same} of {len(histories)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
