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


# queries per task of the thread pool: fixed (not batch / threads) so that which rows share a BLAS
# call, and so every score's rounding, does not depend on the thread count
CHUNK = 2048


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


@dataclass
class Timed:
    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall:6.2f}s wall {self.cpu:6.2f}s cpu"


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, Timed(time.perf_counter() - wall, time.process_time() - cpu)


def in_batches(n: int, size: int, fn) -> list:
    """fn(users) for consecutive batches of user indices, as the pipeline's u2i step calls the sources."""
    return [fn(np.arange(s, min(s + size, n))) for s in range(0, n, size)]


def stack(parts: list) -> tuple[np.ndarray, np.ndarray]:
    return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])


def agreement(got: tuple, want: tuple) -> str:
    items, scores = got
    w_items, w_scores = want
    width = min(items.shape[1], w_items.shape[1])
    return (f"items equal {np.mean(items[:, :width] == w_items[:, :width]):.6f}, "
            f"scores bit-equal {np.mean(scores[:, :width] == w_scores[:, :width]):.4f}")


def recall_at(got: np.ndarray, want: np.ndarray) -> float:
    """Share of each row's wanted items (non-pad) that `got` has, over all rows."""
    rows = np.repeat(np.arange(len(want)), want.shape[1])
    n = max(int(want.max(initial=0)), int(got.max(initial=0))) + 2
    w = rows * n + want.reshape(-1)
    g = np.repeat(np.arange(len(got)), got.shape[1]) * n + got.reshape(-1)
    w, g = w[want.reshape(-1) >= 0], np.sort(g[got.reshape(-1) >= 0])
    pos = np.minimum(np.searchsorted(g, w), max(g.size - 1, 0))
    return float(np.mean(g[pos] == w)) if w.size and g.size else 1.0


def run(size: str, work: Path, threads: int, k: int, batch: int, caps: list[int], target: float,
        implicit_threads: int) -> dict:
    import faiss
    import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot links it: loaded before BLAS is pinned)
    from threadpoolctl import threadpool_limits

    from bench import peers
    from recall import candidates as cand
    from recall import compiled as C
    from recall import index
    from recall.matrix import seen_matrix
    from recall.recaller import cooccurrence_neighbours

    res: dict = {"size": size, "threads": threads, "k": k, "batch": batch}
    inp, t = timed(prepare, size, work)
    users, items = inp.users, inp.items
    n_users, n_items = len(users), len(items)
    seen = seen_matrix(inp.counts)
    allowed = np.ones(n_items, bool)
    allowed_idx = np.flatnonzero(allowed)
    faiss.omp_set_num_threads(threads)
    print(f"{size}: {n_users} users x {n_items} items, {seen.nnz} pairs, {users.shape[1]} ALS factors "
          f"(inputs {t.wall:.1f}s); k={k}, {threads} threads, batches of {batch} users")
    warm = np.arange(min(64, n_users))  # compile or load every kernel before timing
    exact = index.exact_index(items[allowed], allowed_idx)
    bounds = C.norm_bounds(exact.vectors)
    ex = C.exclusion_lists(seen[warm], exact.item_idx, warm.size)
    for kind in ("numba", "numpy"):
        C.exact_search(users[warm], exact.vectors, exact.item_idx, k, *ex, bounds, product=kind)
    C.exact_top_k_keys_parallel(users[warm], exact.vectors, exact.item_idx, k, *ex, bounds, 4096)
    lines = []

    def show(name: str, t: Timed, extra: str = "") -> None:
        lines.append(f"  {name:<58} {t}" + (f"   {extra}" if extra else ""))
        print(lines[-1], flush=True)
        res[name] = {"wall": round(t.wall, 3), "cpu": round(t.cpu, 3)}

    # (i) the bare product, as bench's peer runs it (BLAS on all the job's threads)
    with threadpool_limits(limits=threads, user_api="blas"):
        _, product = timed(peers.scoring_product, users, items)
    show("(i) bare scoring product users @ items.T", product)

    # (ii) today's exact search, per batch as the pipeline calls it
    def today_exact(u):
        return exact.search(users[u], k, exclude=seen[u])

    want, t_today = timed(lambda: stack(in_batches(n_users, batch, today_exact)))
    show("(ii) today's exact search (recall.index)", t_today, f"{t_today.wall / product.wall:.2f}x product wall")

    # (iii) compiled exact search
    def compiled_exact(u, kind="numba", bounds=bounds, **kw):
        ex = C.exclusion_lists(seen[u], exact.item_idx, u.size)
        return C.exact_search(users[u], exact.vectors, exact.item_idx, k, *ex, bounds, threads=threads,
                              chunk=CHUNK, product=kind, **kw)

    _, t_bounds = timed(C.norm_bounds, exact.vectors)
    show("     norm bounds (once per index build)", t_bounds)
    results = {}
    for kind in ("numba", "numpy"):
        got, t = timed(lambda: stack(in_batches(n_users, batch, lambda u: compiled_exact(u, kind))))
        results[kind] = t
        show(f"(iii) compiled exact, {kind} product, thread pool", t,
             f"{t.wall / product.wall:.2f}x product wall, {t.cpu / product.cpu:.2f}x cpu; vs today: "
             f"{agreement(got, want)}")
    with threadpool_limits(limits=1, user_api="blas"):
        def par(u):
            ex = C.exclusion_lists(seen[u], exact.item_idx, u.size)
            return C.unpack_keys(C.exact_top_k_keys_parallel(users[u], exact.vectors, exact.item_idx, k, *ex, bounds,
                                                             CHUNK))
        got_par, t = timed(lambda: stack(in_batches(n_users, batch, par)))
    show("(iii) compiled exact, numba product, parallel=True (prange)", t, f"{t.wall / product.wall:.2f}x product wall")
    same_tiles = np.full(n_items + 1, np.inf)
    tq = index.TILE_QUERIES  # chunks on today's tile boundaries, so every product has today's shape

    def same_as_today(u):
        ex = C.exclusion_lists(seen[u], exact.item_idx, u.size)
        return C.exact_search(users[u], exact.vectors, exact.item_idx, k, *ex, same_tiles, threads=threads,
                              chunk=-(-u.size // (threads * tq)) * tq, product="numpy", tile_queries=tq,
                              tile_items=index.TILE_ITEMS)

    got_same, t = timed(lambda: stack(in_batches(n_users, batch, same_as_today)))
    show("(iii) compiled exact, today's tiles, no early stop", t, f"vs today: {agreement(got_same, want)}")
    exact_compiled = results["numba"]
    res["exact_vs_product"] = round(exact_compiled.wall / product.wall, 3)
    res["today_exact_vs_product"] = round(t_today.wall / product.wall, 3)

    # (iv) IVF: today's build; nprobe doubled then bisected to the target recall on a sample
    approx, t_build = timed(index.approx_index, items[allowed], allowed_idx, 0, 0, 42, k)
    centroids = approx.quantizer.reconstruct_n(0, approx.nlist)
    cbounds = C.cell_bounds(approx.vectors, approx.offsets.astype(np.int64))
    sample = np.sort(np.random.default_rng(42).choice(n_users, min(2000, n_users), replace=False))
    s_ex = C.exclusion_lists(seen[sample], approx.item_idx, sample.size)

    def sample_recall(nprobe: int) -> float:
        probes = C.probe_cells(users[sample], centroids, nprobe)
        got, _ = C.ivf_search(users[sample], probes, approx.offsets, approx.vectors, approx.item_idx, k, *s_ex,
                              cbounds)
        return recall_at(got, want[0][sample])

    miss, hit, nprobe, tried = 0, None, approx.nprobe, {}
    while True:
        tried[nprobe] = sample_recall(nprobe)
        if tried[nprobe] >= target:
            hit = nprobe
        else:
            miss = nprobe
        if (hit is None and nprobe >= approx.nlist) or (hit is not None and hit - miss <= 1):
            break
        nprobe = min(approx.nlist, 2 * nprobe) if hit is None else (miss + hit) // 2
    approx.nprobe = hit or approx.nlist
    print(f"  IVF: {approx.nlist} cells (built in {t_build.wall:.1f}s), nprobe {approx.nprobe} for recall@{k} >= "
          f"{target} on {sample.size} users (tried {tried})")
    res["ivf"] = {"nlist": approx.nlist, "nprobe": approx.nprobe, "tried": tried}

    def today_ivf(u):
        return approx.search(users[u], k, exclude=seen[u])

    got_today_ivf, t_today_ivf = timed(lambda: stack(in_batches(n_users, batch, today_ivf)))
    show("(iv) today's IVF search", t_today_ivf, f"recall@{k} {recall_at(got_today_ivf[0], want[0]):.4f}; "
         f"exact/approx {t_today.wall / t_today_ivf.wall:.2f}x (today's exact)")

    def compiled_ivf(u):
        per = CHUNK
        probes = C.probe_cells(users[u], centroids, approx.nprobe, threads=threads, chunk=per)
        ex = C.exclusion_lists(seen[u], approx.item_idx, u.size)
        return C.ivf_search(users[u], probes, approx.offsets, approx.vectors, approx.item_idx, k, *ex, cbounds,
                            threads=threads, chunk=per)

    compiled_ivf(warm)
    got_ivf, t_ivf = timed(lambda: stack(in_batches(n_users, batch, compiled_ivf)))
    show("(iv) compiled IVF search (probes + cells, thread pool)", t_ivf,
         f"recall@{k} {recall_at(got_ivf[0], want[0]):.4f}; exact/approx {exact_compiled.wall / t_ivf.wall:.2f}x "
         f"(compiled exact), {t_today.wall / t_ivf.wall:.2f}x (today's exact); vs today's IVF: "
         f"{agreement(got_ivf, got_today_ivf)}")
    with threadpool_limits(limits=1, user_api="blas"):
        probes_all, t_probes = timed(C.probe_cells, users, centroids, approx.nprobe, threads)
    unit = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), np.float32(1e-12))
    aug = np.hstack([unit, np.zeros((n_users, 1), np.float32)])
    (_, faiss_probes), t_fprobes = timed(approx.quantizer.search, aug, approx.nprobe)
    show("     of which probes: compiled nearest_cells (all users)", t_probes,
         f"faiss IndexFlatL2 {t_fprobes}; same order {np.mean((probes_all == faiss_probes).all(1)):.5f} of rows, "
         f"same set {np.mean((np.sort(probes_all, 1) == np.sort(faiss_probes, 1)).all(1)):.5f}")

    def par_ivf(u):
        probes = C.probe_cells(users[u], centroids, approx.nprobe, threads=threads, chunk=CHUNK)
        ex = C.exclusion_lists(seen[u], approx.item_idx, u.size)
        return C.unpack_keys(C.ivf_top_k_keys_parallel(users[u], probes, approx.offsets.astype(np.int64),
                                                       approx.vectors, approx.item_idx, k, *ex, cbounds,
                                                       CHUNK))

    with threadpool_limits(limits=1, user_api="blas"):
        par_ivf(warm)
        _, t = timed(lambda: stack(in_batches(n_users, batch, par_ivf)))
    show("(iv) compiled IVF search, parallel=True (prange)", t)
    res["approx_speedup_compiled"] = round(exact_compiled.wall / t_ivf.wall, 3)
    res["approx_speedup_today"] = round(t_today.wall / t_today_ivf.wall, 3)

    # (v) item_based aggregation on the same BM25 neighbours
    nb, sim = C.item_knn(inp.counts, "bm25", 50, allowed, threads=threads)
    recent = inp.recent

    def today_ib(u):
        return cand.item_based(nb, sim, recent[u], cand.Batch(u, seen[u], n_items), allowed, k)

    want_ib, t = timed(lambda: stack(in_batches(n_users, batch, today_ib)))
    show("(v) today's item_based (recall.candidates)", t)
    t_today_ib = t
    C.item_based(nb, sim, recent[warm], seen[warm], allowed, k)
    got_ib, t = timed(lambda: stack(in_batches(n_users, batch, lambda u: C.item_based(
        nb, sim, recent[u], seen[u], allowed, k, threads=threads, chunk=CHUNK))))
    show("(v) compiled item_based", t, f"{t_today_ib.wall / t.wall:.1f}x faster; "
         f"identical: {np.array_equal(got_ib[0], want_ib[0]) and np.array_equal(got_ib[1], want_ib[1])}")

    # (vi) item-kNN: implicit's BM25Recommender as recaller.cooccurrence_neighbours runs it, then ours
    (want_nb, want_sim), t_impl = timed(cooccurrence_neighbours, inp.counts, "bm25", 50, allowed)
    show("(vi) implicit BM25 item-kNN (recaller, num_threads=1)", t_impl)
    if implicit_threads > 1:
        from implicit.nearest_neighbours import BM25Recommender
        import warnings

        model = BM25Recommender(K=51, num_threads=implicit_threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            _, t = timed(model.fit, inp.counts, show_progress=False)
        show(f"     implicit BM25Recommender.fit alone, num_threads={implicit_threads}", t)
    C.item_knn(inp.counts[:50], "bm25", 50, allowed, max_user_items=1)  # compile or load before timing
    for th in sorted({1, threads}):
        (got_nb, got_sim), t = timed(C.item_knn, inp.counts, "bm25", 50, allowed, threads=th)
        show(f"(vi) compiled BM25 item-kNN, {th} thread(s)", t,
             f"{t_impl.wall / t.wall:.2f}x faster; identical: "
             f"{np.array_equal(got_nb, want_nb) and np.array_equal(got_sim, want_sim)}")
    full_knn = t
    deg = np.diff(inp.counts.indptr).astype(np.float64)
    ib_sample = np.sort(np.random.default_rng(7).choice(n_users, min(50_000, n_users), replace=False))
    full_lists = C.item_based(got_nb, got_sim, recent[ib_sample], seen[ib_sample], allowed, k, threads=threads)[0]
    res["caps"] = {}
    random_priority = np.random.default_rng(3).random(inp.counts.nnz)  # a seeded sample of each heavy user
    for cap, how in [(c, "weight") for c in caps] + [(c, "random") for c in caps[1:3]]:
        prio = random_priority if how == "random" else None
        (cap_nb, cap_sim), t = timed(C.item_knn, inp.counts, "bm25", 50, allowed, max_user_items=cap,
                                     priority=prio, threads=threads)
        lists = C.item_based(cap_nb, cap_sim, recent[ib_sample], seen[ib_sample], allowed, k, threads=threads)[0]
        share = float((np.minimum(deg, cap) ** 2).sum() / (deg ** 2).sum())
        nb_recall = recall_at(cap_nb, got_nb)
        ib_recall = recall_at(lists, full_lists)
        show(f"(vi) compiled BM25 item-kNN, users capped at {cap} items ({how})", t,
             f"{full_knn.wall / t.wall:.1f}x faster than uncapped; users capped {np.mean(deg > cap):.4f}, "
             f"pair updates {share:.3f}; neighbours@50 recall {nb_recall:.4f}, item_based@{k} recall "
             f"{ib_recall:.4f}")
        res["caps"][f"{cap} {how}"] = {"wall": t.wall, "neighbour_recall": nb_recall, "item_based_recall": ib_recall,
                            "update_share": share}
    res["lines"] = lines
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__)
    p.add_argument("--size", choices=("small", "reference"), default="small")
    p.add_argument("--work", type=Path, default=Path("data/bench"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--batch", type=int, default=8192, help="users per call, as recall.u2i.batch_size")
    p.add_argument("--caps", default="3000,1000,300,100", help="max_user_items values for the capped item-kNN")
    p.add_argument("--target", type=float, default=0.95, help="IVF recall@k target against exact search")
    p.add_argument("--implicit-threads", type=int, default=2, help="also time implicit's fit on this many threads")
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.prepare_only:
        inp, t = timed(prepare, a.size, a.work)
        print(f"inputs: {inp.users.shape[0]} users x {inp.items.shape[0]} items, {inp.counts.nnz} pairs ({t.wall:.1f}s)")
        return 0
    from bench.measure import machine_busy

    busy0, total0, wall0, cpu0 = *machine_busy(), time.perf_counter(), time.process_time()
    res = run(a.size, a.work, a.threads, a.k, a.batch, [int(c) for c in a.caps.split(",") if c], a.target,
              a.implicit_threads)
    busy1, total1 = machine_busy()
    wall, own = time.perf_counter() - wall0, time.process_time() - cpu0
    cores = os.cpu_count() or 1
    other = max(0.0, (busy1 - busy0) / max(total1 - total0, 1) * cores - own / wall)
    res["other_load_cores"] = round(other, 2)
    print()
    print(f"other processes used {other:.2f} of {cores} cores meanwhile (wall times wander with it; CPU times less)")
    print(f"exact u2i search / bare product (wall): today {res['today_exact_vs_product']:.2f}x, compiled "
          f"{res['exact_vs_product']:.2f}x (goal <= 1.25x)")
    print(f"approx speed-up over exact (wall, at recall@{a.k} >= {a.target}): today {res['approx_speedup_today']:.2f}x, "
          f"compiled {res['approx_speedup_compiled']:.2f}x (goal >= 3x)")
    path = a.json or Path("bench/results") / f"kernels-{a.size}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
