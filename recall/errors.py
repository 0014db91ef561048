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


EXIT_BUG = 1
