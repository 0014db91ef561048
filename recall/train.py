"""Train implicit's ALS on the confidence matrix, with BLAS pinned so threads are not oversubscribed."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recall.config import ModelSection


@dataclass
class Factors:
    users: np.ndarray  # float32, C-contiguous, n_users x factors
    items: np.ndarray  # float32, C-contiguous, n_items x factors


def job_threads(requested: int) -> int:
    """Threads a job may use: the spec's count, or every core this process may run on."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def train_als(user_items: sp.csr_matrix, spec: ModelSection, show_progress: bool = False) -> Factors:
    """Fit ALS on `user_items` (users x items, the `r` of confidence 1 + alpha * r)."""
    from implicit.cpu.als import AlternatingLeastSquares

    # implicit parallelises over users itself; a multi-threaded BLAS underneath only fights it.
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=spec.factors,
            regularization=spec.regularization,
            alpha=spec.alpha,
            iterations=spec.iterations,
            random_state=spec.random_state,
            num_threads=job_threads(spec.threads),
            calculate_training_loss=False,
        )
        model.fit(user_items, show_progress=show_progress)
    return Factors(
        users=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        items=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )
