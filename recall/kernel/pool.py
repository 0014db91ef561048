"""Running a kernel over rows: BLAS pinned to one thread, rows split into fixed chunks on a
thread pool. Shared by the compiled and the plain kernels (no numba here)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None


def single_threaded_blas():
    """BLAS pinned to one thread. The libraries are looked up once per process (a lookup reads
    /proc/self/maps: ~3 ms, more than a whole one-user search), then only their limits change."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def in_chunks(n: int, chunk: int, threads: int, run) -> None:
    """Call run(start, stop) over [0, n) in chunks, on `threads` threads (the kernels release the
    GIL), BLAS pinned to one thread so the threads do not oversubscribe the cores."""
    starts = range(0, n, max(1, chunk))
    with single_threaded_blas():
        if threads <= 1 or n <= chunk:
            for s in starts:
                run(s, min(s + chunk, n))
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for f in [pool.submit(run, s, min(s + chunk, n)) for s in starts]:
                    f.result()
