"""The `recall` command line as a real process: run to the end, or started in the background to
be paused, signalled or killed."""
from __future__ import annotations

import contextlib
import io
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def environment(env: dict | None) -> dict:
    full = {**os.environ, **(env or {})}
    full.pop("RECALL_ROOT", None)
    return full


def run_cli(root: Path, *args: str, timeout: float = 300, env: dict | None = None,
            as_user: bool = False) -> subprocess.CompletedProcess:
    """`python -m recall --root ROOT ARGS...` to its end; `as_user`: bound by file permissions
    even when the tests run as root (see `unprivileged`)."""
    cmd = [sys.executable, "-m", "recall", "--root", str(root), *args]
    return subprocess.run(unprivileged(cmd) if as_user else cmd,
                          capture_output=True, text=True, timeout=timeout, env=environment(env), cwd=root)


def unprivileged(cmd: list[str]) -> list[str]:
    """`cmd` as a process that file permissions bind: as root (CI), through setpriv with the
    capabilities that override them taken away; otherwise as it is."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run a command bound by file permissions as root"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
def run_in_process(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`recall --root ROOT ARGS...` through the CLI's own main() in this process (stdout and
    stderr captured): what an engine on a session shared by the tests needs."""
    from recall.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--root", str(root), *args])
    return subprocess.CompletedProcess(["recall", *args], code, out.getvalue(), err.getvalue())


def start_cli(root: Path, *args: str, env: dict | None = None, output: Path | None = None) -> subprocess.Popen:
    """The same, started in the background: stderr piped, or stdout and stderr to `output`."""
    cmd = [sys.executable, "-m", "recall", "--root", str(root), *args]
    if output is not None:
        return subprocess.Popen(cmd, stdout=open(output, "w"), stderr=subprocess.STDOUT, text=True,
                                env=environment(env), cwd=root)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(env),
                            cwd=root)


def resume(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    """Let a run paused at a test pause point go on (SIGUSR1) and wait for its end."""
    os.kill(proc.pid, signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll `condition` every 10 ms while `proc` runs; fail if it exits or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            said = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{said}")
        if time.monotonic() > deadline:
            kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def wait_for_stderr(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read the run's stderr until a line holding `text` (e.g. a test pause point) appears."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if text in line:
                return line
    kill(proc)
    raise AssertionError(f"{text!r} never appeared on stderr:\n{''.join(seen)}")


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL the run (a real signal, no cleanup possible) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    return proc.returncode


class LogTail:
    """What a job's log gained since this object was made (the runs started after it)."""

    def __init__(self, root: Path, job: str = "small") -> None:
        self.path = root / "logs" / f"{job}.log"
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode("utf-8", errors="replace")

    def has(self, fragment: str) -> bool:
        return fragment in self.text()


def run_on_terminal(root: Path, *args: str, timeout: float = 300,
                    columns: int = 120) -> subprocess.CompletedProcess:
    """`recall ARGS...` with its stderr on a pseudo-terminal `columns` wide (as a person at a
    terminal runs it), stdout piped; `.stderr` is what the terminal received, carriage returns
    and all."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "recall", "--root", str(root), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=environment(None), cwd=root)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other end closed
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        stdout = proc.stdout.read().decode()
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            kill(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, seen.decode(errors="replace"))
