"""Failures that say what happened: one stderr line, the documented exit code, nothing published;
and a record of each case for the reliability report."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.files import published_files, staging_left, success_markers


def record(case: str, res: subprocess.CompletedProcess, note: str = "") -> None:
    """Append what a case produced (exit code, stderr) to $RECALL_RELIABILITY_REPORT, a Markdown table."""
    target = os.environ.get("RECALL_RELIABILITY_REPORT")
    if not target:
        return
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    text = " / ".join(lines).replace("|", "\\|") or "(none)"
    new = not Path(target).exists()
    with open(target, "a", encoding="utf-8") as fh:
        if new:
            fh.write("| case | exit | stderr lines | stderr | note |\n| --- | --- | --- | --- | --- |\n")
        fh.write(f"| {case} | {res.returncode} | {len(lines)} | {text} | {note} |\n")


def one_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr}"
    assert lines[0].startswith("recall: "), lines[0]
    return lines[0]


def assert_refused(res: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The documented exit code and one stderr line holding every fragment."""
    assert res.returncode == code, f"exit {res.returncode}, expected {code}:\n{res.stderr}"
    line = one_line(res)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_untouched(out: Path, before: dict[str, bytes], markers_before: list[str]) -> None:
    """Nothing published, previous output byte-identical, no staging left behind."""
    assert success_markers(out) == markers_before, "a new _SUCCESS appeared"
    after = published_files(out)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"published files changed: {changed}"
    assert staging_left(out) == [], f"staging left behind: {staging_left(out)}"
