"""ALS training: seeded, BLAS pinned (no OpenBLAS warning), factors shaped as expected."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from recall.spec.sections import ModelSection
from recall.model.als import train_als
from recall.runtime import job_threads


def matrix() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    return sp.random(200, 80, density=0.05, format="csr", dtype=np.float32, random_state=rng)


def test_training_is_seeded_and_warning_free():
    spec = ModelSection(factors=8, iterations=3, threads=2, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the OpenBLAS threadpool warning would raise here
        a = train_als(matrix(), spec, spec.threads)
    b = train_als(matrix(), spec, spec.threads)
    assert a.users.shape == (200, 8) and a.items.shape == (80, 8)
    assert a.users.dtype == np.float32 and a.items.flags["C_CONTIGUOUS"]
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)


def test_thread_count_is_deterministic_across_thread_counts():
    one = train_als(matrix(), ModelSection(factors=8, iterations=3), 1)
    two = train_als(matrix(), ModelSection(factors=8, iterations=3), 2)
    assert np.array_equal(one.items, two.items)


def test_job_threads():
    assert job_threads(3) == 3 and job_threads(0) >= 1
