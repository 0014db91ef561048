"""`python -m bench.kernels --size small|reference`: the compiled kernels (recall.compiled) against
today's numpy/BLAS code and the bare scoring product, measured in the same run on the same inputs.

Inputs: the benchmark's generated power-law log (bench.gen), turned into the matrix by the
pipeline's own functions, and ALS factors trained by recall.train (64 factors, 15 iterations, the
bench's settings). Real factors rather than random ones because the IVF recall and the norm-ordered
threshold of exact search both depend on their structure. The factors, seen matrix and recent items
are cached under WORK/SIZE/kernels-inputs.npz, so later runs skip reading and training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench import gen
from bench.run import RUN_DATE, Options, write_spec


@dataclass
class Inputs:
    users: np.ndarray  # float32 n_users x f
    items: np.ndarray  # float32 n_items x f
    counts: sp.csr_matrix  # users x items, summed weights (float32, sorted indices)
    recent: np.ndarray  # n_users x R most recent items, -1 pads


def prepare(size_name: str, work: Path, factors: int = 64, iterations: int = 15, threads: int = 2,
            recent_r: int = 5) -> Inputs:
    """The log, matrix and ALS factors of a bench size, cached once computed."""
    size = gen.SIZES[size_name]
    root = work.resolve() / size_name
    cache = root / "kernels-inputs.npz"
    params = json.dumps({"size": vars(size), "factors": factors, "iterations": iterations, "recent": recent_r})
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["params"]) == params:
                counts = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
                return Inputs(z["users"], z["items"], counts, z["recent"])
    from recall.config import load_spec
    from recall.io import Window, read_window
    from recall.matrix import encode, to_csr
    from recall.recaller import recent_items
    from recall.train import train_als
    from recall.validate import validate

    gen.generate(root / "log", RUN_DATE, size)
    opts = Options(size=size_name, factors=factors, iterations=iterations, threads=threads, work=work)
    spec = load_spec(write_spec(opts, size, "exact"))
    window = Window(RUN_DATE, spec.job.lookback_days, spec.job.timezone)
    raw = read_window(spec.input, window, root)
    clean, _ = validate(raw, spec.input)
    inter = encode(clean)
    del raw, clean
    counts = to_csr(inter)
    from recall.matrix import confidence
    fitted = train_als(confidence(counts, spec.model), spec.model)
    recent = recent_items(inter, recent_r)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "kernels-inputs.tmp.npz"
    np.savez(tmp, params=params, users=fitted.users, items=fitted.items, data=counts.data,
             indices=counts.indices, indptr=counts.indptr, shape=np.array(counts.shape), recent=recent)
    os.replace(tmp, cache)
    return Inputs(fitted.users, fitted.items, counts, recent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__)
    p.add_argument("--size", choices=("small", "reference"), default="small")
    p.add_argument("--work", type=Path, default=Path("data/bench"))
    p.add_argument("--prepare-only", action="store_true")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    inp = prepare(a.size, a.work)
    print(f"inputs: {inp.users.shape[0]} users x {inp.items.shape[0]} items, {inp.counts.nnz} pairs "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
