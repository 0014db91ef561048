"""One run per job at a time: an flock on <output>/<job>/_lock, freed by the kernel on death."""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recall.errors import LockBusy, OutputError


@contextmanager
def job_lock(path: Path, job: str) -> Iterator[None]:
    """Hold the job's lock for the block, or raise LockBusy naming the holder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # never through a planted link
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"refusing to use {path}: it is a symbolic link (to {os.readlink(path)}), and a run "
                              f"writes only inside {path.parent}",
                              hint="remove the link (nothing was written) and rerun the date") from None
        raise OutputError(f"cannot create lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"job {job} is already running: {holder(fd)} holds {path}") from None
        since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since, "host": socket.gethostname()}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock; the file stays so no two inodes ever compete


def holder(fd: int) -> str:
    """Who holds the lock, from what the holder wrote into the file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        if info.get("host") == socket.gethostname() and not alive(int(info["pid"])):
            return "another process"  # the file still names a dead holder: the new one is just starting
        return f"pid {info['pid']} (since {info['since']}, host {info.get('host', '?')})"
    except (OSError, ValueError, KeyError):
        return "another process"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
