"""Crontab entries from the job specs (python-crontab): show, install, remove.

One entry per spec in jobs/ with a [job] schedule, tagged with a comment naming this project
and the job, so installing twice leaves one entry per job and foreign entries are never touched.
The shared environment lines of crontab/environment are put inline in each command (a
`VAR=value` line in a user's crontab would leak into the entries that are not ours).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import shlex
import sys
from pathlib import Path

from crontab import CronSlices, CronTab

from recall.errors import SpecError

ENV_FILE = "environment"
RENDERED = "recall.cron"
ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
SAFE_PATH = re.compile(r"^[A-Za-z0-9_@%+=:,./ -]+$")


def check_expression(expr: str, where: str) -> None:
    """Refuse what cron would not run; '%' is refused as cron turns it into a newline."""
    if "%" in expr or "\n" in expr or not CronSlices.is_valid(expr):
        raise SpecError(f"{where}: bad cron expression {expr!r}")


def project_tag(root: Path) -> str:
    """The comment prefix marking this project's entries (one project may not touch another's)."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"recall:{digest}:"


def recall_command() -> list[str]:
    """Absolute path of the installed `recall`, so cron's short PATH and no venv still work."""
    script = Path(sys.executable).parent / "recall"
    return [str(script)] if script.exists() else [sys.executable, "-m", "recall"]


def environment(root: Path) -> list[tuple[str, str]]:
    path = root / "crontab" / ENV_FILE
    if not path.exists():
        return [("SHELL", "/bin/sh"), ("PATH", "/usr/local/bin:/usr/bin:/bin")]
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if not match or "%" in line:
            raise SpecError(f"{path}:{number}: expected NAME=value without '%', got {line!r}")
        pairs.append((match.group(1), match.group(2).strip().strip('"')))
    return pairs


def entries(root: Path) -> list[tuple[str, str, str]]:
    """(job name, schedule, command) for every scheduled spec in jobs/; all validated first."""
    from recall.config import load_spec

    out = []
    for path in sorted((root / "jobs").glob("*.toml")):
        spec = load_spec(path)
        if not spec.job.schedule:
            continue
        out.append((spec.name, spec.job.schedule, command_for(root, path)))
    names = [name for name, _, _ in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SpecError(f"two specs in {root / 'jobs'} share the job name {dup!r}")
    return out


def command_for(root: Path, spec_path: Path) -> str:
    for text in (str(root), spec_path.name):
        if not SAFE_PATH.match(text) or "%" in text:
            raise SpecError(f"refusing to put {text!r} in a crontab line: only letters, digits and ./_-@+=:, "
                            "are allowed (no '%', quotes, ';' or newlines)")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment(root))
    run = " ".join(shlex.quote(p) for p in [*recall_command(), "--root", str(root), "run",
                                             f"jobs/{spec_path.name}"])
    log = shlex.quote(str(root / "logs" / "cron.out"))
    return f"cd {shlex.quote(str(root))} && env {env} RECALL_ROOT={shlex.quote(str(root))} {run} >> {log} 2>&1"


def open_tab(tabfile: str | None) -> CronTab:
    if tabfile:
        path = Path(tabfile)
        return CronTab(tabfile=str(path)) if path.exists() else CronTab(tab="")
    return CronTab(user=True)


def rendered(root: Path) -> str:
    lines = [f"# recall entries for {root} (rendered {dt.datetime.now().isoformat(timespec='seconds')})"]
    tag = project_tag(root)
    for name, expr, command in entries(root):
        lines.append(f"{expr} {command} # {tag}{name}")
    return "\n".join(lines) + "\n"


def install(root: Path, tabfile: str | None) -> list[str]:
    """Replace this project's entries with one per scheduled spec; others untouched."""
    wanted = entries(root)  # every spec validated before the crontab is touched
    cron = open_tab(tabfile)
    tag = project_tag(root)
    cron.remove_all(comment=re.compile("^" + re.escape(tag)))
    for name, expr, command in wanted:
        job = cron.new(command=command, comment=f"{tag}{name}")
        job.setall(expr)
        if not job.is_valid():
            raise SpecError(f"bad cron expression {expr!r} for job {name}")
    save(cron, tabfile)
    write_rendered(root)
    return [name for name, _, _ in wanted]


def remove(root: Path, tabfile: str | None) -> int:
    cron = open_tab(tabfile)
    tag = project_tag(root)
    before = len(list(cron.find_comment(re.compile("^" + re.escape(tag)))))
    cron.remove_all(comment=re.compile("^" + re.escape(tag)))
    save(cron, tabfile)
    return before


def save(cron: CronTab, tabfile: str | None) -> None:
    if tabfile:
        from recall.publish import write_atomic

        write_atomic(Path(tabfile), cron.render())
    else:
        cron.write()


def write_rendered(root: Path) -> Path:
    path = root / "crontab" / RENDERED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rendered(root), encoding="utf-8")
    return path


def next_runs(expr: str, count: int = 3, start: dt.datetime | None = None) -> list[dt.datetime]:
    """The next `count` times cron would start `expr` (machine-local time)."""
    from croniter import croniter

    it = croniter(expr, start or dt.datetime.now())
    return [it.get_next(dt.datetime) for _ in range(count)]


def command(action: str, root: Path, tabfile: str | None) -> int:
    where = tabfile or "the user's crontab"
    if action == "show":
        for name, expr, cmd in entries(root):
            runs = ", ".join(t.strftime("%Y-%m-%d %H:%M") for t in next_runs(expr))
            print(f"{expr} {cmd} # {project_tag(root)}{name}\n    next runs: {runs}")
        if not entries(root):
            print(f"no spec in {root / 'jobs'} has a [job] schedule")
        return 0
    if action == "install":
        names = install(root, tabfile)
        print(f"installed {len(names)} entr{'y' if len(names) == 1 else 'ies'} into {where}: {', '.join(names)}")
        return 0
    count = remove(root, tabfile)
    print(f"removed {count} entr{'y' if count == 1 else 'ies'} of {root} from {where}")
    return 0
