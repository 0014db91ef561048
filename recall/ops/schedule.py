"""Crontab entries from the job specs: show, install, remove.

One entry per spec in jobs/ with a [job] schedule, tagged with a comment naming this project
and the job (`# recall:<hash of the project folder>:<job>`), and one more per spec with a
[nearline] schedule (`# recall:<hash>:<job>:nearline`: `:` is not allowed in a job name, so no job
can take this tag), so installing twice leaves one entry per job and refresh and entries that
are not ours are never touched. python-crontab parses and renders the
entries and validates expressions; the crontab itself is edited line by line, because
python-crontab's own render re-formats foreign lines (spacing, quoting, env lines moved or
dropped), and foreign lines must stay byte for byte as they were.

The shared environment lines of crontab/environment are put inline in each command: a
`VAR=value` line in a user's crontab would leak into the entries that are not ours.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crontab import CRON_COMMAND, CronItem, CronTab

from recall.errors import OutputError, SpecError
from recall.jobs import load_job
from recall.spec.cron import next_runs
from recall.store.atomic import write_atomic

ENV_FILE = "environment"
RENDERED = "recall.cron"
CRON_OUT = "cron.out"
ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# what may appear unquoted-safe in a crontab line: no '%' (cron makes it a newline), no quotes,
# ';', '$', '`', backslashes or newlines; spaces only in the project folder, where they are quoted
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_@+=:,./ -]*$")
SPEC_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.toml$")
DEFAULT_ENV = [("SHELL", "/bin/sh"), ("PATH", "/usr/local/bin:/usr/bin:/bin")]
ENCODING = dict(encoding="utf-8", errors="surrogateescape")  # any byte of a foreign line survives


NEARLINE = "nearline"  # the tag suffix and the verb of a job's nearline refresh entry


@dataclass(frozen=True)
class Entry:
    """One job's crontab entry: its nightly run, or its nearline refresh."""

    job: str
    schedule: str
    command: str
    comment: str
    verb: str = "run"

    @property
    def label(self) -> str:
        return self.job if self.verb == "run" else f"{self.job} ({self.verb})"

    @property
    def line(self) -> str:
        item = CronItem(command=self.command, comment=self.comment)
        item.setall(self.schedule)
        return item.render()


# --- building entries --------------------------------------------------------------


def project_tag(root: Path) -> str:
    """The comment prefix marking this project's entries (one project may not touch another's)."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"recall:{digest}:"


def recall_command() -> list[str]:
    """Absolute path of the installed `recall`, so cron's short PATH and no venv still work."""
    script = Path(sys.executable).parent / "recall"
    return [str(script)] if script.exists() else [sys.executable, "-m", "recall"]


def safe_path(text: str, what: str) -> str:
    if not SAFE_PATH.match(text):
        raise SpecError(f"refusing to put {what} {text!r} into a crontab line: only an absolute path of "
                        "letters, digits, spaces and ./_-@+=:, is allowed (no '%', quotes, ';', '$' or newlines)")
    return text


def environment(root: Path) -> list[tuple[str, str]]:
    """NAME=value pairs of crontab/environment (a default when the file is absent)."""
    path = root / "crontab" / ENV_FILE
    if not path.exists():
        return DEFAULT_ENV
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if not match or "%" in line:
            raise SpecError(f"{path}:{number}: expected NAME=value without '%', got {line!r}")
        value = match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        pairs.append((match.group(1), value))
    return pairs


def command_for(root: Path, spec_path: Path, env: list[tuple[str, str]], verb: str = "run") -> str:
    """cd to the project, set the shared environment, run the job (catching up missed nights),
    or its nearline refresh (its one summary line a few times an hour is not kept: failures
    still go to cron.out, everything to the job's nearline log)."""
    safe_path(str(root), "the project folder")
    if not SPEC_FILE.match(spec_path.name):
        raise SpecError(f"refusing to put spec file name {spec_path.name!r} into a crontab line: "
                        "use only letters, digits, '_', '-' and '.' (no spaces, ';', '%', quotes or newlines)")
    recall = recall_command()
    safe_path(recall[0], "the recall program")
    q = shlex.quote
    assignments = " ".join(f"{k}={q(v)}" for k, v in env)
    out = q(str(root / 'logs' / CRON_OUT))
    if verb == NEARLINE:
        run = " ".join(q(p) for p in [*recall, "--root", str(root), NEARLINE, f"jobs/{spec_path.name}"])
        return f"cd {q(str(root))} && env {assignments} {run} > /dev/null 2>> {out}"
    run = " ".join(q(p) for p in [*recall, "--root", str(root), "run", f"jobs/{spec_path.name}", "--catch-up"])
    return f"cd {q(str(root))} && env {assignments} {run} >> {out} 2>&1"


def entries(root: Path) -> list[Entry]:
    """One entry per scheduled spec in jobs/, and one per scheduled nearline refresh; every spec
    is loaded and validated first (the first that does not load is the error)."""
    out, errors = load_entries(root)
    if errors:
        raise errors[0]
    return out


def load_entries(root: Path) -> tuple[list[Entry], list[SpecError]]:
    """The entries of the specs that load, and the errors of those that do not."""
    folder = root / "jobs"
    if not folder.is_dir():
        raise SpecError(f"no jobs/ folder in {root}: it is not a recall project folder",
                        hint="run recall from the project folder, or name it with --root DIR or the environment "
                             "variable RECALL_ROOT=DIR")
    env = environment(root)
    tag = project_tag(root)
    out, errors, names = [], [], []
    for path in sorted(folder.glob("*.toml")):
        try:
            spec = load_job(path)
        except SpecError as exc:
            errors.append(exc)
            continue
        if spec.job.schedule:
            schedule = " ".join(spec.job.schedule.split())
            out.append(Entry(spec.name, schedule, command_for(root, path, env), tag + spec.name))
        if spec.nearline.schedule:
            schedule = " ".join(spec.nearline.schedule.split())
            out.append(Entry(spec.name, schedule, command_for(root, path, env, NEARLINE),
                             f"{tag}{spec.name}:{NEARLINE}", NEARLINE))
        if spec.job.schedule or spec.nearline.schedule:
            names.append(spec.name)
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        errors.append(SpecError(f"two specs in {root / 'jobs'} share the job name {dup!r}"))
    return out, errors


# --- editing a crontab's text ------------------------------------------------------

_PARSER = CronTab(tab="")  # python-crontab needs a tab to parse single lines against


def is_ours(line: str, tag: str) -> bool:
    """A (possibly commented-out) entry whose comment is this project's tag plus a job name."""
    if tag not in line:  # cheap, and keeps python-crontab from logging about foreign lines
        return False
    item = CronItem.from_line(line.rstrip("\r\n"), cron=_PARSER)
    return item.is_valid() and bool(re.fullmatch(re.escape(tag) + r"[A-Za-z0-9_-]+(:" + NEARLINE + ")?",
                                                 item.comment or ""))


def splice(text: str, tag: str, new: list[str]) -> tuple[str, int]:
    """`text` with this project's entries replaced by `new` (where the first old one was, else at
    the end); every other line kept byte for byte. Returns the new text and how many went."""
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    kept: list[str] = []
    at, removed = None, 0
    for line in lines:
        if is_ours(line, tag):
            at = len(kept) if at is None else at
            removed += 1
        else:
            kept.append(line)
    if at is None:
        at = len(kept)
        if new and kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"  # cron needs every line ended
    return "".join(kept[:at] + [line + "\n" for line in new] + kept[at:]), removed


# --- reading and writing a crontab -------------------------------------------------


def where(tabfile: str | None) -> str:
    return tabfile or "the user's crontab"


def read_tab(tabfile: str | None) -> str:
    if tabfile:
        try:
            return Path(tabfile).read_bytes().decode(**ENCODING)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise OutputError(f"cannot read crontab file {tabfile}: {exc.strerror}", hint="nothing was changed") from None
    try:
        proc = subprocess.run([CRON_COMMAND, "-l"], capture_output=True, timeout=60)
    except OSError as exc:
        raise OutputError(f"cannot run {CRON_COMMAND} -l: {exc.strerror}",
                          hint="install cron (Debian: apt-get install cron), or use --tabfile") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(**ENCODING).strip()
        if "no crontab for" in err:
            return ""
        raise OutputError(f"{CRON_COMMAND} -l failed: {err}", hint="nothing was changed")
    return proc.stdout.decode(**ENCODING)


def write_tab(tabfile: str | None, text: str) -> None:
    """Replace the crontab in one step: a failure leaves it as it was."""
    data = text.encode(**ENCODING)
    if not tabfile:
        # nothing left: remove the crontab rather than leave an empty one (the same to cron)
        args = [CRON_COMMAND, "-r"] if not text.strip() else [CRON_COMMAND, "-"]
        try:
            proc = subprocess.run(args, input=None if not text.strip() else data, capture_output=True, timeout=60)
        except OSError as exc:
            raise OutputError(f"cannot run {CRON_COMMAND}: {exc.strerror}", hint="the crontab was left as it was") from None
        if proc.returncode != 0:
            err = " ".join(proc.stderr.decode(**ENCODING).split())
            raise OutputError(f"{CRON_COMMAND} refused the new table: {err}", hint="the crontab was left as it was")
        return
    path = Path(tabfile)
    tmp = None
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else None
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write crontab file {tabfile}: {exc.strerror}",
                          hint="the crontab file was left as it was") from None


def write_rendered(root: Path, wanted: list[Entry]) -> Path:
    """crontab/recall.cron: exactly the lines this project puts into a crontab."""
    path = root / "crontab" / RENDERED
    text = f"# recall entries for {root}, installed by `recall cron install`; do not edit\n"
    text += "".join(e.line + "\n" for e in wanted)
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}", hint="the crontab was left as it was") from None
    return path


# --- the verbs ---------------------------------------------------------------------


def install(root: Path, tabfile: str | None) -> list[Entry]:
    """Replace this project's entries with one per scheduled spec; other lines untouched."""
    wanted = entries(root)  # every spec validated before anything is touched
    before = read_tab(tabfile)
    after, _ = splice(before, project_tag(root), [e.line for e in wanted])
    try:
        (root / "logs").mkdir(parents=True, exist_ok=True)  # the entries append to logs/cron.out
    except OSError as exc:
        raise OutputError(f"cannot create {root / 'logs'}: {exc.strerror}", hint="the crontab was left as it was") from None
    write_rendered(root, wanted)
    if after != before:
        write_tab(tabfile, after)
    return wanted


def remove(root: Path, tabfile: str | None) -> int:
    before = read_tab(tabfile)
    after, count = splice(before, project_tag(root), [])
    if count:
        write_tab(tabfile, after)
    return count


def installed_state(entry: Entry, current: list[str], tag: str) -> str:
    if entry.line in current:
        return "installed"
    if any(is_ours(line, tag) and line.rstrip().endswith("# " + entry.comment) for line in current):
        return "installed, outdated (run `recall cron install`)"
    return "not installed"


def show(root: Path, tabfile: str | None) -> None:
    """Print the entries of the specs that load; then, if some do not, fail naming them (exit 2):
    one bad spec does not hide the others."""
    wanted, errors = load_entries(root)
    if not wanted:
        print(f"no spec in {root / 'jobs'} " + ("that loads " if errors else "") + "has a [job] or [nearline] schedule")
    else:
        print_entries(wanted, root, tabfile)
    if errors:
        shown = f"the other {len(wanted)} entr{'y is' if len(wanted) == 1 else 'ies are'} above" if wanted else \
            "no entry to show"
        raise SpecError(f"{len(errors)} spec(s) in {root / 'jobs'} cannot be scheduled ({shown}): "
                        + " | ".join(str(e) for e in errors),
                        hint="fix them; `recall cron install` refuses to touch the crontab until every spec loads")


def print_entries(wanted: list[Entry], root: Path, tabfile: str | None) -> None:
    try:
        current = read_tab(tabfile).splitlines()
    except OutputError:
        current = None
    zone = dt.datetime.now().astimezone().tzname()
    tag = project_tag(root)
    for e in wanted:
        runs = ", ".join(t.strftime("%Y-%m-%d %H:%M") for t in next_runs(e.schedule))
        state = installed_state(e, current, tag) if current is not None else "unknown (cannot read crontab)"
        print(f"{e.line}\n    job {e.label}: next runs {runs} ({zone}); {state} in {where(tabfile)}")


def command(action: str, root: Path, tabfile: str | None) -> int:
    if action == "show":
        show(root, tabfile)
    elif action == "install":
        done = install(root, tabfile)
        print(f"installed {len(done)} entr{'y' if len(done) == 1 else 'ies'} into {where(tabfile)}: "
              f"{', '.join(e.label for e in done) or '-'} (rendered in {root / 'crontab' / RENDERED})")
    else:
        count = remove(root, tabfile)
        print(f"removed {count} entr{'y' if count == 1 else 'ies'} of {root} from {where(tabfile)}")
    return 0
