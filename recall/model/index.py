"""Building the item index of the als source: exact (items by norm) or an inverted file whose
cells are FAISS k-means cells; the result is plain numpy (recall.kernel.state.ItemIndex)."""
from __future__ import annotations

import math

import faiss
import numpy as np

from recall.kernel import compiled
from recall.kernel.state import ItemIndex


def exact_index(vectors: np.ndarray, item_idx: np.ndarray) -> ItemIndex:
    """Items by descending norm: the likely winners are scored first, so the threshold rises early."""
    vectors = np.asarray(vectors, dtype=np.float32)
    order = np.argsort(-np.einsum("ij,ij->i", vectors, vectors), kind="stable")
    ordered = np.ascontiguousarray(vectors[order])
    return ItemIndex(item_idx.astype(np.int64)[order], ordered, bounds=compiled.norm_bounds(ordered))


def ivf_defaults(n: int, k: int) -> tuple[int, int]:
    """IVF cells about 2 sqrt(n); first probe about a twentieth of them, and never fewer than hold
    30 k items (the run's recall check then adjusts nprobe to the target recall). At 50k items, 450
    cells of ~110 items need 25 probes for recall@100 0.95 on the benchmark's ALS factors."""
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
    nprobe = max(math.ceil(nlist / 20), math.ceil(30 * k * nlist / n))
    return nlist, min(nlist, nprobe)


def approx_index(vectors: np.ndarray, item_idx: np.ndarray, nlist: int, nprobe: int, seed: int, threads: int,
                 k: int = 100) -> ItemIndex:
    """An inverted file over vectors augmented with sqrt(max_norm^2 - norm^2), where L2 neighbours
    are inner-product neighbours (Bachrach et al. 2014, as implicit's ANN models do): FAISS k-means
    cells of the augmented vectors; a query (augmented by 0) probes its `nprobe` L2-nearest cells,
    whose items are then scored by true inner product."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    norms = np.einsum("ij,ij->i", vectors, vectors)
    scaled = vectors / np.float32(max(np.sqrt(norms.max()), 1e-12))  # every norm <= 1
    extra = np.sqrt(np.maximum(1.0 - norms / max(norms.max(), 1e-24), 0)).astype(np.float32)
    augmented = np.ascontiguousarray(np.hstack([scaled, extra[:, None]]))
    default_nlist, default_nprobe = ivf_defaults(n, k)
    nlist = min(nlist or default_nlist, n)
    faiss.omp_set_num_threads(threads)  # k-means and the cell assignment
    clustering = faiss.Clustering(dim + 1, nlist)
    clustering.seed = seed
    cap = clustering.max_points_per_centroid * nlist
    rng = np.random.default_rng(seed)
    sample = augmented if n <= cap else augmented[np.sort(rng.choice(n, cap, replace=False))]
    quantizer = faiss.IndexFlatL2(dim + 1)
    clustering.train(sample, quantizer)
    _, cell = quantizer.search(augmented, 1)
    centroids = np.ascontiguousarray(quantizer.reconstruct_n(0, nlist), dtype=np.float32)
    order = np.argsort(cell[:, 0], kind="stable")
    offsets = np.searchsorted(cell[order, 0], np.arange(nlist + 1))
    nprobe = nprobe or (default_nprobe if nlist == default_nlist else max(1, math.ceil(nlist / 20)))
    ordered, offsets = np.ascontiguousarray(vectors[order]), offsets.astype(np.int64)
    return ItemIndex(item_idx.astype(np.int64)[order], ordered, centroids, offsets, min(nprobe, nlist),
                     compiled.cell_bounds(ordered, offsets))


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine via inner product); zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
