"""Train implicit's ALS on the confidence matrix, with BLAS pinned so threads are not oversubscribed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from recall.errors import stop_if_signalled
from recall.spec.sections import ModelSection


@dataclass
class Factors:
    users: np.ndarray  # float32, C-contiguous, n_users x factors
    items: np.ndarray  # float32, C-contiguous, n_items x factors


def iteration_done(bar: tqdm) -> None:
    bar.update(1)
    stop_if_signalled()  # a fit of many iterations is one step: a lost signal is raised here


def train_als(user_items: sp.csr_matrix, spec: ModelSection, threads: int, show_progress: bool | str = False) -> Factors:
    """Fit ALS on `user_items` (users x items, the `r` of confidence 1 + alpha * r); with
    `show_progress` a progress bar, labelled with it when it is a text."""
    # implicit parallelises over users itself; a multi-threaded BLAS underneath only fights it.
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=spec.factors,
            regularization=spec.regularization,
            alpha=spec.alpha,
            iterations=spec.iterations,
            random_state=spec.random_state,
            num_threads=threads,
            calculate_training_loss=False,
        )
        label = show_progress if isinstance(show_progress, str) else "ALS"
        with tqdm(total=spec.iterations, desc=label, unit="iteration", leave=False,
                  disable=not show_progress) as bar:
            model.fit(user_items, show_progress=False, callback=lambda *_: iteration_done(bar))
    return Factors(
        users=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        items=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )
