"""A run told to stop (Ctrl-C, `timeout`, systemd, a shutdown, a closed terminal) stops as a
failure does: the signal becomes `Interrupted`, raised in the main thread, so the run puts back
what it had begun to publish, clears its staging, records itself in the job's history and its
monitoring, and prints one line; the process exits 128 + the signal's number."""
from __future__ import annotations

import signal

from recall.errors import signalled

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def install() -> None:
    """Raise Interrupted on SIGINT, SIGTERM and SIGHUP. A signal inherited as ignored (nohup, a
    background job of a script) stays ignored. Only the first signal raises: later ones are
    noted and dropped, so the clean-up the first one set off runs to its end (SIGKILL still
    ends the process at once)."""
    for signum in HANDLED:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)


def _stop(signum: int, frame: object) -> None:
    for other in HANDLED:
        if signal.getsignal(other) is _stop:
            signal.signal(other, _later)  # a handler, not SIG_IGN: children started later get the default
    raise signalled(signum)  # kept pending too: a raise inside a finalizer is lost (recall.errors)


def _later(signum: int, frame: object) -> None:
    """A second signal while the first one's clean-up runs: dropped."""
