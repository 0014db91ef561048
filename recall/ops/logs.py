"""loguru sinks: the job's rotating file (everything), and stderr: on a terminal a few plain
lines (records bound with `say=True`) beside labelled progress bars, warnings and errors; under
cron only warnings and errors. `-v` shows every record on stderr."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from loguru import logger

from recall.spec.sections import LogSection
from recall.errors import SpecError

FILE_FORMAT = ("{time:YYYY-MM-DD HH:mm:ss.SSS ZZ} | {level: <7} | job={extra[job]} date={extra[date]} "
               "run={extra[run_id]} | {message}")
MIN_FREE = 64 * 1024  # below this the log file is not opened: a run logs a few KB
CONSOLE_FORMAT = "<level>{level: <7}</level> {time:HH:mm:ss} {extra[job]} {extra[date]} | {message}"


def interactive() -> bool:
    return sys.stderr.isatty()


def setup_console(verbose: bool = False) -> None:
    """stderr: what a person at a terminal wants to see, and only problems under cron.

    Records bound with console=False (the full detail of a failure whose one-line summary
    the CLI prints itself) stay out of stderr; INFO records stay in the job's log file unless
    bound with say=True (and the terminal is a terminal).
    """
    logger.remove()
    logger.configure(extra={"job": "-", "date": "-", "run_id": "-"})
    if verbose:
        logger.add(sys.stderr, level="DEBUG", format=CONSOLE_FORMAT, colorize=interactive(),
                   filter=lambda r: r["extra"].get("console", True))
        return
    tty = interactive()

    def shown(record) -> bool:
        if not record["extra"].get("console", True):
            return False
        return record["level"].no >= WARNING or (tty and record["extra"].get("say", False))

    logger.add(sys.stderr, level="INFO", format=console_line, colorize=False, filter=shown)


WARNING = 30


def console_line(record) -> str:
    """`job date: message` for what a run says on a terminal; `recall: warning: ...` for problems."""
    extra = record["extra"]
    who = f"{extra['job']} {extra['date']}: " if extra.get("job", "-") != "-" else ""
    if record["level"].no >= WARNING:
        return f"recall: {record['level'].name.lower()}: {who}{{message}}\n"
    return f"{who}{{message}}\n"


def add_job_file(spec: LogSection, job: str, root: Path) -> int:
    """The job's log file; call only while holding the job's lock, so a loser never rotates it."""
    folder = root / spec.dir  # an absolute dir replaces root
    path = folder / f"{job}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if free_bytes(folder) < MIN_FREE:  # else every record would print loguru's error report
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return logger.add(path, level=spec.level, format=FILE_FORMAT, rotation=spec.rotation,
                          retention=spec.retention, compression=spec.compression or None,
                          encoding="utf-8", enqueue=False, backtrace=False, diagnose=False,
                          catch=True)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"[log] settings refused by loguru: {exc}") from None
    except OSError as exc:
        # a log folder we cannot write must not stop the run, nor silence it: say so on stderr
        logger.warning(f"cannot write log file {path}: {exc.strerror}; logging to stderr only")
        return -1


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def remove_sink(sink_id: int) -> None:
    if sink_id >= 0:
        try:
            logger.remove(sink_id)
        except (ValueError, OSError):  # OSError: the last flush hit a full disk; the run's outcome stands
            pass


def add_serve_log(root: Path) -> None:
    """`recall serve`: loads, reloads and failures to logs/serve.log (rotated like a job's log,
    default settings) and to stderr (systemd's journal), whatever the terminal."""
    spec = LogSection()
    logger.remove()
    logger.configure(extra={"job": "serve", "date": "-", "run_id": "-"})
    logger.add(sys.stderr, level="INFO", format=CONSOLE_FORMAT, colorize=interactive(),
               filter=lambda r: r["extra"].get("console", True))
    folder = root / spec.dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        logger.add(folder / "serve.log", level="INFO", format=FILE_FORMAT, rotation=spec.rotation,
                   retention=spec.retention, compression=spec.compression, encoding="utf-8", catch=True)
    except OSError as exc:
        logger.warning(f"cannot write {folder / 'serve.log'}: {exc.strerror}; logging to stderr only")
