"""Failures the pipeline expects, each tied to the exit code DESIGN.md documents."""
from __future__ import annotations

import signal


class RecallError(Exception):
    """Base class: an expected failure with a one-line message and an exit code."""

    exit_code = 1
    hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self) -> str:
        """The one line printed to stderr: what went wrong and what to do."""
        text = " ".join(str(self).split())
        return f"{text}; {self.hint}" if self.hint else text


class SpecError(RecallError):
    """Bad command line or job spec."""

    exit_code = 2
    hint = "fix the job spec or the command line and run again"


class InputError(RecallError):
    """Input missing, unreadable or invalid."""

    exit_code = 3
    hint = "fix the input (or the [input] section) and rerun the date"


class GateError(RecallError):
    """The quality gate refused to publish."""

    exit_code = 4
    hint = "previous tables kept; investigate, or rerun with --skip-gate to publish anyway"


class OutputError(RecallError):
    """Output could not be written."""

    exit_code = 5
    hint = "nothing was published; free space or fix permissions and rerun the date"


class LockBusy(RecallError):
    """Another run of the same job holds its lock."""

    exit_code = 75
    hint = "wait for it to finish, or check that process"


class Interrupted(BaseException):
    """The process was told to stop (SIGINT, SIGTERM, SIGHUP). A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it; it exits with
    128 + the signal's number, as a shell reports a process the signal ended (130, 143, 129)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.exit_code = 128 + signum
        verb = "interrupted" if signum == signal.SIGINT else "terminated"
        super().__init__(f"{verb} by {self.signame}")
        self.hint = ""

    def line(self) -> str:
        text = " ".join(str(self).split())
        return f"{text}; {self.hint}" if self.hint else text


# A signal's Interrupted can be lost: Python drops an exception a signal handler raises while a
# finalizer (__del__, which garbage collection runs at any allocation) is executing. So the
# signal is also kept here until a run takes its Interrupted, and step boundaries raise it again.
_pending: list[int] = []


def signalled(signum: int) -> Interrupted:
    """The Interrupted a signal handler raises, kept pending until a run takes it."""
    if not _pending:
        _pending.append(signum)
    return Interrupted(signum)


def taken() -> None:
    """The run caught its Interrupted and is cleaning up: step boundaries no longer raise it."""
    _pending.clear()


def stop_if_signalled() -> None:
    """At a step boundary: raise the Interrupted of a signal no run has taken (its first raise
    was lost in a finalizer)."""
    if _pending:
        raise Interrupted(_pending[0])


EXIT_BUG = 1
