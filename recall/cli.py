"""The `recall` command line: verbs, exit codes, one clear stderr line on failure."""
from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow.parquet as pq
from loguru import logger

from recall.errors import EXIT_BUG, InputError, Interrupted, RecallError, SpecError
from recall.ingest.prepare import prepare
from recall.ingest.window import Window
from recall.jobs import find_job
from recall.ops import report, schedule, signals, status
from recall.ops.logs import setup_console
from recall.run.batch import catch_up, run_dates
from recall.run import tune
from recall.run.nearline import run_nearline
from recall.run.nightly import RunOptions, run_job
from recall.runtime import job_threads
from recall.samples import datasets
from recall.samples.synth import SynthSpec, generate
from recall.spec.check import MAX_DAYS
from recall.spec.sections import JobSpec
from recall.store.layout import TABLES, job_dir
from recall.store.reader import read_table

DESCRIPTION = """\
Offline batch recall: train ALS on a window of the interaction log, compute u2i / i2i / popular
candidates with FAISS, and publish them as Parquet tables, atomically.

Exit codes: 0 published (or already published), 1 internal error, 2 bad command line or job spec,
3 bad or missing input, 4 quality gate refused, 5 output not writable, 75 job already running.
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2), like every other failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        verb = self.prog.removeprefix("recall").strip()
        if not verb and "required: VERB" in message:
            raise SpecError("no VERB given; usage: recall [--root DIR] VERB [ARGS], VERB one of "
                            + ", ".join(verbs(self)), hint="see `recall --help`, or `recall VERB --help`")
        raise SpecError(f"{verb}: {message}" if verb else message, hint=f"see `{self.prog} --help`")


def verbs(parser: argparse.ArgumentParser) -> list[str]:
    """The verbs the parser knows, in the order they were added."""
    return [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def project_root(args: argparse.Namespace) -> Path:
    root = args.root or os.environ.get("RECALL_ROOT") or os.getcwd()
    return Path(root).resolve()


DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_date(text: str) -> dt.date:
    """YYYY-MM-DD; a date of that form that does not exist (2026-11-31) is told apart from a typo."""
    match = DATE_RE.match(text)
    if not match:
        raise SpecError(f"bad date {text!r}: expected YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        year, month, _ = (int(g) for g in match.groups())
        if not 1 <= year <= 9999:
            why = f"there is no year {year}"
        elif not 1 <= month <= 12:
            why = f"there is no month {month}"
        else:
            why = f"{calendar.month_name[month]} {year} has {calendar.monthrange(year, month)[1]} days"
        raise SpecError(f"bad date {text!r}: no such date ({why})") from None


def checked_window(spec: JobSpec, date: dt.date, what: str = "--date") -> Window:
    """The run's window, refused (exit 2) when it falls outside the calendar (years 1..9999)."""
    window = Window(date, spec.job.lookback_days, spec.job.timezone)
    try:
        window.bounds_us()
    except (OverflowError, ValueError):
        raise SpecError(f"{what} {date} is out of range: with [job] lookback_days = {spec.job.lookback_days} its "
                        f"window must lie within the years 1..9999") from None
    return window


def yesterday(timezone: str) -> dt.date:
    return dt.datetime.now(ZoneInfo(timezone)).date() - dt.timedelta(days=1)


def load(args: argparse.Namespace, job: str | None = None) -> tuple[JobSpec, Path]:
    root = project_root(args)
    return find_job(job or args.job, root, getattr(args, "set", None) or []), root


def add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", metavar="JOB", help="a job spec: path to a TOML file, or a name in jobs/")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a spec key, e.g. --set model.factors=128 (repeatable)")


# --- verbs -----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    spec, root = load(args)
    if args.catch_up:
        if args.date:
            raise SpecError("--catch-up and --date do not go together")
        return catch_up(spec, root, yesterday(spec.job.timezone), args.force, args.skip_gate)
    date = parse_date(args.date) if args.date else yesterday(spec.job.timezone)
    checked_window(spec, date)
    result = run_job(spec, RunOptions(date, root, args.force, args.skip_gate, progress=sys.stderr.isatty()))
    report_result(result)
    return 0


def cmd_nearline(args: argparse.Namespace) -> int:
    spec, root = load(args)
    result = run_nearline(spec, root, force=args.force)
    m = result.manifest
    if result.status == "up to date":
        print(f"{result.job} {result.date}: u2i_fresh is up to date (run {result.run_id}, {m.users_refreshed:,} users "
              "refreshed); nothing new since")
    else:
        print(f"{result.job} {result.date}: published u2i_fresh, {m.users_refreshed:,} users refreshed "
              f"({m.rows:,} rows) from {m.input.get('rows', 0):,} rows after the window"
              + (f" up to {m.cutoff}" if m.cutoff else "") + f" under {result.output}")
    return 0


def report_result(result) -> None:
    if result.status == "skipped":
        print(f"{result.job} {result.date}: already published, skipped (use --force to replace it)")
        return
    print(f"{result.job} {result.date}: published "
          + ", ".join(f"{name} {rows:,} rows" for name, rows in result.manifest.rows.items())
          + f" under {result.output}")


def cmd_backfill(args: argparse.Namespace) -> int:
    spec, root = load(args)
    start, end = parse_date(args.from_date), parse_date(args.to_date)
    if end < start:
        raise SpecError(f"--to {end} is before --from {start}")
    checked_window(spec, start, "--from")
    checked_window(spec, end, "--to")
    dates = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    return run_dates(spec, root, dates, args.force, args.skip_gate, keep_going=args.keep_going)


def cmd_check(args: argparse.Namespace) -> int:
    spec, root = load(args)
    date = parse_date(args.date) if args.date else yesterday(spec.job.timezone)
    window = checked_window(spec, date)
    stats = prepare(spec, window, root).stats
    bad = stats.bad
    print(f"{spec.name}: spec {spec.source} is valid (hash {spec.spec_hash()})")
    print(f"window {window.start}..{date}: {stats.rows:,} rows in {len(stats.files)} file(s), "
          f"{bad.bad_rows:,} bad ({bad.fraction:.3%}, limit {spec.input.max_bad_fraction:.2%}), "
          f"{stats.users:,} users x {stats.items:,} items, {stats.blocklisted} blocklisted")
    for c in bad.by_check[:10]:
        print(f"  bad: {c['file']} column {c['column']!r}: {c['check']}, {c['rows']} rows")
    if stats.missing_days:
        print(f"  days without data: {', '.join(stats.missing_days)}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    spec, root = load(args)
    date = parse_date(args.date) if args.date else yesterday(spec.job.timezone)
    window = checked_window(spec, date)
    data = prepare(spec, window, root)
    if spec.evaluate.holdout_days == 0:
        spec.evaluate.holdout_days = 1
    log = (lambda msg: print(msg, file=sys.stderr)) if sys.stderr.isatty() else (lambda msg: None)
    try:
        result = tune.search(data, spec, job_threads(spec.model.threads), args.budget, args.trials, args.seed, log)
    except ValueError as exc:
        raise InputError(f"cannot tune {spec.name} on {window.start}..{date}: {exc}") from None
    choosing, reporting = result.users
    print(f"# {spec.name}: tuned on {result.split}, recall@{spec.evaluate.k}, seed {args.seed}: trials scored on "
          f"{choosing} users, the result reported on {reporting} others")
    print(tune.table(result))
    print("\n# single sources with the tuned options: "
          + ", ".join(f"{n} {m.recall:.4f}" for n, m in result.single.items()))
    print(f"# merged with the best blend: recall {result.merged.recall:.4f}, ndcg {result.merged.ndcg:.4f}")
    if args.apply:
        tune.merge_into(Path(spec.source), result)
        print(f"# merged into {spec.source}:\n")
    else:
        print("# the settings that differ from the spec (recall tune --apply merges them into it):\n")
    print(tune.snippet(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    root = project_root(args)
    if args.max_age is not None and not args.check:
        raise SpecError("--max-age goes with --check")
    if args.max_age is not None and not args.max_age > 0:
        raise SpecError(f"--max-age {args.max_age:g}: must be a number of hours above 0")
    try:
        return status.command(root, args.job, lambda job: load(args, job)[0], args.json, args.check, args.max_age)
    except RecallError as exc:
        if not args.check or args.json:
            raise
        print(f"RECALL UNKNOWN: {exc.line()}")  # a check that cannot judge says so, on stdout, as Nagios reads it
        return status.UNKNOWN


def cmd_generate(args: argparse.Namespace) -> int:
    spec, root = load(args)
    end = parse_date(args.end) if args.end else yesterday(spec.job.timezone)
    for flag, value, most in (("--days", args.days, MAX_DAYS), ("--users", args.users, None),
                              ("--items", args.items, None), ("--rows-per-day", args.rows_per_day, None)):
        if value < 1 or (most and value > most):
            raise SpecError(f"{flag} {value}: must be at least 1" + (f" and at most {most}" if most else ""))
    if end - dt.date.min < dt.timedelta(days=args.days):
        raise SpecError(f"--end {end} with --days {args.days} starts before the year 1")
    target = root / spec.input.path
    synth = SynthSpec(users=args.users, items=args.items, rows_per_day=args.rows_per_day, days=args.days,
                      seed=args.seed)
    files = generate(target, end, synth)
    print(f"wrote {len(files)} day(s) of synthetic interactions ({files[0].parent.name}..{files[-1].parent.name}) "
          f"under {target}")
    return 0


def demo_root(args: argparse.Namespace) -> Path:
    """The project folder of `recall demo`: the one named (--root, $RECALL_ROOT) or the current
    one when it holds jobs/example.toml; else the checkout this package runs from (`pip install
    -e .`), so that the demo works from any folder."""
    root = project_root(args)
    if args.root or os.environ.get("RECALL_ROOT") or (root / "jobs" / "example.toml").is_file():
        return root
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "jobs" / "example.toml").is_file() else root


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the example job's input if absent, run it for yesterday, show what was published."""
    root = demo_root(args)
    spec = find_job("example", root)
    print(f"project folder: {root}")
    date = yesterday(spec.job.timezone)
    target = root / spec.input.path
    if not (target / f"dt={date.isoformat()}").exists():
        generate(target, date, SynthSpec(days=max(spec.job.lookback_days, 28)))
        print(f"generated a synthetic interaction log under {target}")
    result = run_job(spec, RunOptions(date, root, force=False, progress=sys.stderr.isatty()))
    report_result(result)
    out = job_dir(spec, root)
    manifest = result.manifest
    if manifest and manifest.metrics:
        print(f"holdout recall@{manifest.metrics.k}: merged {manifest.metrics.merged.recall:.4f}, "
              f"popular baseline {manifest.metrics.popular_baseline.recall:.4f}")
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        for table in [t for t in TABLES if t in manifest.tables] if manifest else []:
            frame = read_table(spec.name, table, date.isoformat(), output=out.root.parent)
            print(f"\n{table}: {len(frame):,} rows in {out.partition(table, date.isoformat())}")
            print(frame.head(5).to_string(index=False))
    print(f"\nmanifest: {out.manifest(date.isoformat())}\nlog: {root / spec.log.dir / (spec.name + '.log')}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    root = project_root(args)
    source = datasets.locate(args.source)
    for name in args.names or list(datasets.LOADERS):
        if name not in datasets.LOADERS:
            raise SpecError(f"unknown data set {name!r}; known: {', '.join(datasets.LOADERS)}")
        path = datasets.prepare(name, source, root / "data" / "datasets")
        table = pq.read_table(path)
        last = datasets.last_date(table)
        print(f"{name}: {table.num_rows:,} rows -> {path}" + (f" (last day {last})" if last else " (no timestamps)"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    spec, root = load(args)
    target = Path(args.out) if args.out else root / "data" / "reports" / f"{spec.name}.html"
    path = report.write(spec.name, job_dir(spec, root), target, spec.gate)
    print(f"wrote {path}")
    return 0


def cmd_cron(args: argparse.Namespace) -> int:
    root = project_root(args)
    return schedule.command(args.action, root, args.tabfile)


def cmd_serve(args: argparse.Namespace) -> int:
    root = project_root(args)
    names = args.jobs or sorted(p.stem for p in (root / "jobs").glob("*.toml"))
    if not names:
        raise SpecError(f"no job to serve: name one, or put specs in {root / 'jobs'}")
    jobs = {}
    for name in names:
        spec = load(args, name)[0]
        jobs[spec.name] = job_dir(spec, root)
    if not 1 <= args.workers <= 64:
        raise SpecError(f"--workers must be from 1 to 64, got {args.workers}")
    if args.poll <= 0:
        raise SpecError(f"--poll must be positive, got {args.poll}")
    try:
        import orjson  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SpecError(f"recall serve needs its extra: {exc}", hint="pip install 'recall[serve]'") from None
    cache = Path(args.cache).resolve() if args.cache else root / "data" / "serve"
    settings = {"root": str(root), "jobs": {name: str(job.root) for name, job in jobs.items()}, "host": args.host,
                "port": args.port, "workers": args.workers, "cache": str(cache), "poll": args.poll}
    # the server runs as `python -m recall.serve.main` in this same process (same pid): it and its
    # workers import only what serving needs, not the training stack the command line loads
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "recall.serve.main", json.dumps(settings)])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="recall", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", metavar="DIR",
                        help="project folder holding jobs/, crontab/, logs/, data/ (default: $RECALL_ROOT or .)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)

    p = sub.add_parser("run", help="run one job for one date (default: yesterday)",
                       description="Run JOB for one date: read the window, train, search, publish. "
                                   "A date already published is skipped unless --force.")
    add_job_args(p)
    p.add_argument("--date", metavar="YYYY-MM-DD", help="run date (default: yesterday in the job's time zone)")
    p.add_argument("--force", action="store_true", help="replace the date's output if already published")
    p.add_argument("--skip-gate", action="store_true", help="publish even if the quality gate fails (recorded)")
    p.add_argument("--catch-up", action="store_true",
                   help="run every date missing since the last published one, up to yesterday")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("nearline", help="refresh the u2i lists of the users active since the nightly run",
                       description="Fold every user active after the latest published window in again (their "
                                   "whole history plus the new rows, against the published item side) and publish "
                                   "their lists as the overlay u2i_fresh of that date; readers prefer a user's "
                                   "fresh rows. Run by cron through [nearline] schedule.")
    add_job_args(p)
    p.add_argument("--force", action="store_true", help="refresh even when nothing is new since the last refresh")
    p.set_defaults(func=cmd_nearline)

    p = sub.add_parser("backfill", help="run a range of dates in order",
                       description="Run JOB for each date from --from to --to (inclusive), in order.")
    add_job_args(p)
    p.add_argument("--from", dest="from_date", required=True, metavar="YYYY-MM-DD")
    p.add_argument("--to", dest="to_date", required=True, metavar="YYYY-MM-DD")
    p.add_argument("--force", action="store_true", help="replace dates already published")
    p.add_argument("--skip-gate", action="store_true", help="publish even if the quality gate fails")
    p.add_argument("--keep-going", action="store_true", help="go on after a failed date")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("status", help="what is published, when, rows, metrics, last failure",
                       description="Show, per job, the last published date, its age, rows, duration, "
                                   "the last failure and the next scheduled run; --json for all of it as JSON, "
                                   "--check for a monitoring check.")
    p.add_argument("job", metavar="JOB", nargs="?", help="one job (default: every spec in jobs/)")
    p.add_argument("--json", action="store_true", help="everything known about each job, as JSON")
    p.add_argument("--check", action="store_true",
                   help="a Nagios-style check of the scheduled jobs (or JOB): one line; exit 0 OK, 1 WARNING "
                        "(days without data, state files rebuilt or unreadable), 2 CRITICAL (latest date older "
                        "than --max-age, last run failed, nothing published, spec does not load), 3 UNKNOWN")
    p.add_argument("--max-age", type=float, metavar="HOURS",
                   help=f"with --check: the oldest the latest date may be, in hours since its end "
                        f"(default {status.DEFAULT_MAX_AGE_H:g})")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check", help="validate a spec and its input without running",
                       description="Load and validate JOB's spec, read and validate its input window.")
    add_job_args(p)
    p.add_argument("--date", metavar="YYYY-MM-DD", help="window end (default: yesterday)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("tune", help="search ALS settings and the source blend on the holdout",
                       description="Seeded search on JOB's holdout: ALS settings (factors, regularization, "
                                   "alpha, weighting), then source options and blend weights, each scored on half "
                                   "the holdout users and reported on the other half. Prints what it tried and "
                                   "the settings as TOML; --apply merges them into the spec.")
    add_job_args(p)
    p.add_argument("--date", metavar="YYYY-MM-DD", help="window end (default: yesterday)")
    p.add_argument("--budget", type=float, default=600, metavar="SECONDS",
                   help="time budget (default 600); trials start in a fixed seeded order until it is spent")
    p.add_argument("--trials", type=int, default=30, metavar="N", help="at most N ALS trials (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apply", action="store_true",
                   help="merge the tuned settings into the spec file (its other keys and comments kept)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="write an HTML page of every published date's metrics and rows",
                       description="A self-contained HTML page (embedded charts) with the holdout metrics "
                                   "per source, the backtest, and the row counts of every published date.")
    add_job_args(p)
    p.add_argument("--out", metavar="PATH", help="where to write (default: data/reports/<job>.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("cron", help="install, remove or show the crontab entries",
                       description="Manage one crontab entry per job spec in jobs/ with a [job] schedule.")
    p.add_argument("action", choices=("install", "remove", "show"))
    p.add_argument("--tabfile", metavar="PATH", help="a crontab file instead of the user's crontab")
    p.set_defaults(func=cmd_cron)

    p = sub.add_parser("generate", help="write a synthetic interaction log to a job's input path",
                       description="Write a deterministic synthetic log (Hive dt= partitions) to JOB's "
                                   "[input] path: power-law users and items, view/click/purchase events.")
    add_job_args(p)
    p.add_argument("--end", metavar="YYYY-MM-DD", help="last day (default: yesterday)")
    p.add_argument("--days", type=int, default=28)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--rows-per-day", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("datasets", help="convert the public logs in ../shared/datasets for jobs/*.toml",
                       description="Write MovieLens, MovieTweetings and Last.fm as Parquet under "
                                   "data/datasets/<name>/ (read by jobs/movielens.toml etc.).")
    p.add_argument("action", choices=("prepare",))
    p.add_argument("names", nargs="*", metavar="NAME", help="movielens, movietweetings, lastfm (default: all)")
    p.add_argument("--source", metavar="DIR", help="the datasets folder (default: $RECALL_DATASETS or ../shared/datasets)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("serve", help="HTTP/JSON lookups of the latest published tables, with fold-in",
                       description="Serve the newest published run of each JOB (default: every spec in jobs/) "
                                   "over HTTP: u2i, i2i, popular, fold-in of new users, /healthz, /metrics. "
                                   "A newly published run is loaded in the background and swapped in.")
    p.add_argument("jobs", metavar="JOB", nargs="*", help="job specs (default: every spec in jobs/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1; about one per core)")
    p.add_argument("--cache", metavar="DIR", help="where loaded runs are built (default: data/serve)")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often _LATEST and the manifests are looked at for a new run (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="generate data for jobs/example.toml, run it, show the tables",
                       description="The first thing to try: runs the example job end to end.")
    p.set_defaults(func=cmd_demo)
    for verb in sub.choices.values():  # `recall VERB --root DIR` works as well as `recall --root DIR VERB`
        verb.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                          help="project folder (default: $RECALL_ROOT or .)")
    return parser


def entry() -> None:
    """The `recall` command (console script and `python -m recall`): main(), then, everything
    flushed, out at once. Native thread pools (Arrow's) can abort a process in their teardown at
    interpreter exit right after a read (apache/arrow#34314, #39862): exit 134 after a run that
    succeeded. Nothing is left to do by then: files are closed and the lock released, and a Spark
    JVM stops with its own session, or on its stdin closing."""
    code = main()
    logger.remove()  # flush and close the log files
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    # published files are never world-writable, whatever the umask (group-write stays as set)
    os.umask(os.umask(0o022) | 0o002)
    signals.install()
    setup_console(verbose="-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:]))
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (RecallError, Interrupted) as exc:
        print(f"recall: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # raised by a library that installs its own SIGINT handling
        print("recall: interrupted by SIGINT", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line here, the traceback in the log
        logger.bind(console=False).opt(exception=exc).error("internal error")
        print(f"recall: internal error (a bug): {type(exc).__name__}: {exc}; details in the job's log",
              file=sys.stderr)
        return EXIT_BUG
