"""Which implementation of the candidate kernels the sources call: `compiled` (numba, the
default: batches of users) or `plain` (NumPy, one user at a time). The two give the same lists
and the same score bits for a batch of one user (tests/test_plain.py checks it), so choosing is a
matter of cost: a server's fold-in answers one user, and with plain kernels never loads numba and
LLVM (about 75 MB a worker, more while numba compiles; `python -m bench.foldin`).

    with plain_kernels():
        merged = recommend(side, batch, how, k)  # recall.sources.recommend, numba never imported

The choice is a context variable, so it holds for the calling thread (and its asyncio task) only.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType

_PLAIN: ContextVar[bool] = ContextVar("recall_plain_kernels", default=False)


@contextmanager
def plain_kernels() -> Iterator[None]:
    """Run the candidate kernels in NumPy within this block."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def kernels() -> ModuleType:
    """The kernel module in use: recall.kernel.plain or recall.kernel.compiled (imported on first
    use; both offer exclusion_lists, exact_search, ivf_search, probe_cells, item_based, ease, fuse)."""
    if _PLAIN.get():
        from recall.kernel import plain

        return plain
    from recall.kernel import compiled

    return compiled
