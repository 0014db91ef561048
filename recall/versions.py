"""Code and library versions recorded in every manifest."""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

from recall import __version__

LIBRARIES = ("numpy", "scipy", "pandas", "pyarrow", "implicit", "faiss-cpu", "threadpoolctl", "loguru",
             "python-crontab", "pyspark")


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{commit}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__


@functools.cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out
