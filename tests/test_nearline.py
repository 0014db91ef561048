"""`recall nearline`: users active after the nightly run get fresh lists in the overlay u2i_fresh.

Real CLI processes on the small published job: a user who interacts after the window gets, after
one refresh, a list without the new items and with items related to them; every refreshed list
equals what the nightly kernel gives that user with the item side fixed; readers (reader API,
the README's DuckDB query) prefer fresh rows; each refresh holds every user since the nightly run;
refreshes and nightly runs at the same time; a SIGKILL at each instant of a refresh; bad input.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.nearline_reference import expected_lists
from recall.contract import u2i_violations
from recall.errors import InputError
from recall.ingest.nearline import locate, rows_after
from recall.ingest.prepare import prepare
from recall.ingest.window import Window
from recall.jobs import find_job
from recall.ops import schedule
from recall.sources import NAMES
from recall.store import item_side
from recall.store.layout import ITEM_SIDE, JobDir
from recall.store.overlay import U2I_FRESH, overlay_state, read_fresh_manifest
from recall.store.reader import read_arrow, read_table
from recall.store.state import read_manifest
from tests.support.cli import resume, run_cli, wait_for_stderr
from tests.support.crash import killed
from tests.support.files import assert_consistent, out_dir, published_files, staging_left
from recall.samples.synth import World
from tests.support.nearline import NEXT, NEXT_DAY, land, land_day
from tests.support.project import DATE, FORCED, REPO, RUN_DATE, SMALL, write_spec

K = 20  # the small spec's u2i k


@dataclass(frozen=True)
class Story:
    """A user followed through a refresh: their window items, the three items they bought after
    it (the most popular of a taste cluster of the synthetic world they never touched), and the
    items related to those (the cluster's other items)."""

    user: int
    seen: set
    new: list
    related: set


def recall_out(root: Path) -> Path:
    return root / "data" / "recall"


def lists(frame: pd.DataFrame) -> dict:
    return {u: g["item_id"].tolist() for u, g in frame.groupby("user_id", sort=True)}


def overlay_users(root: Path) -> set:
    return set(read_table("small", U2I_FRESH, output=recall_out(root))["user_id"])


def one_line(stderr: str) -> str:
    assert stderr.endswith("\n") and stderr.count("\n") == 1 and stderr.startswith("recall: "), stderr
    return stderr


def stories(root: Path, count: int) -> list[Story]:
    """`count` window users with a modest history (8 to 15 rows), each moving into a new cluster."""
    log = pq.read_table(root / "data" / "log").to_pandas()
    start = Window(RUN_DATE, find_job("small", root).job.lookback_days).start.isoformat()
    log = log[log["dt"].astype(str) >= start]  # the window's rows
    cluster = pd.Series(World(SMALL).cluster, index=World(SMALL).item_ids)
    popular = log.groupby("item_id")["user_id"].nunique().sort_values(ascending=False, kind="stable")
    rows = log.groupby("user_id").size()
    nightly = set(read_table("small", "u2i", output=recall_out(root), fresh=False)["user_id"])
    out = []
    for user in sorted(set(rows[(rows >= 8) & (rows <= 15)].index) & nightly)[:count]:
        seen = set(log.loc[log["user_id"] == user, "item_id"])
        far = min(set(range(SMALL.clusters)) - set(cluster[list(seen)]))
        members = [int(i) for i in popular.index if cluster[i] == far and i not in seen]
        out.append(Story(int(user), seen, members[:3], set(cluster.index[cluster == far]) - set(members[:3]) - seen))
    return out


@pytest.fixture(scope="module")
def refreshed_template(published_template, tmp_path_factory) -> tuple[Path, list[Story]]:
    """The published small job, then: five users with a modest history buy three items each of a
    corner of the catalogue they never touched, 600 more rows land for other users, one refresh."""
    root = tmp_path_factory.mktemp("nearline") / "project"
    shutil.copytree(published_template, root)
    followed = stories(root, 5)
    land(root, [(s.user, item, "purchase", f"08:{5 * i:02d}") for s in followed for i, item in enumerate(s.new)])
    land_day(root, 600)
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and "published u2i_fresh" in res.stdout
    return root, followed


@pytest.fixture
def refreshed(refreshed_template, tmp_path) -> tuple[Path, Story]:
    """A private copy of the refreshed project, and its first followed user."""
    root = tmp_path / "project"
    shutil.copytree(refreshed_template[0], root)
    return root, refreshed_template[1][0]


def test_a_user_active_after_the_nightly_run_gets_fresh_candidates(refreshed_template):
    root, followed = refreshed_template
    out = recall_out(root)
    before = lists(read_table("small", "u2i", output=out, fresh=False))
    after = lists(read_table("small", "u2i", output=out))
    gained = 0
    for story in followed:
        mine = after[story.user]
        assert len(mine) == K and mine != before[story.user]
        assert not set(mine) & set(story.new), "recommends what the user just bought"
        assert not set(mine) & story.seen, "recommends what the user had seen in the window"
        assert not set(before[story.user]) & story.related  # nothing of that corner before ...
        assert len(set(mine) & story.related) >= 2, (story, mine)  # ... its items now
        gained += len(set(mine) & story.related)
    assert gained >= 15
    job = JobDir(out / "small")
    m = read_fresh_manifest(job, DATE)
    landed = pq.read_table(root / "data" / "log" / f"dt={NEXT}")
    assert m.base_run_id == read_manifest(job, DATE).run_id
    assert m.input["rows"] == landed.num_rows == 615 and m.input["bad_rows"] == 0
    assert m.users["active"] == len(pc.unique(landed["user_id"]))
    assert m.users_refreshed == m.users["refreshed"] == len(overlay_users(root)) > 300
    assert m.cutoff == pc.max(landed["ts"]).as_py().isoformat() and m.after == f"{NEXT}T00:00:00+00:00"
    assert m.tables[U2I_FRESH].rows == len(read_table("small", U2I_FRESH, output=out))


def test_refreshed_lists_are_the_nightly_kernels_with_the_item_side_fixed(refreshed_template):
    """Every overlay list equals the reference built from the nightly run's own data path (the
    window extended to the new day, read, weighted, recent items picked as a nightly run does),
    each user solved by implicit's recalculate_user against the published item factors; the
    table readers get keeps the u2i contract for every user; users not refreshed keep their rows."""
    root, _ = refreshed_template
    out = recall_out(root)
    spec = find_job("small", root)
    published = item_side.load(JobDir(out / "small").partition(ITEM_SIDE, DATE))
    fresh = read_table("small", U2I_FRESH, output=out)
    expected = expected_lists(spec, root, DATE, NEXT, published, pa.array(sorted(set(fresh["user_id"]))),
                              solver="implicit")
    ids = published.item_ids.to_pylist()
    want = {u: [ids[i] for i in row if i >= 0] for u, row in zip(expected.users.to_pylist(), expected.items)}
    assert lists(fresh) == want
    sources = {u: [NAMES[c] for c in row[row >= 0]] for u, row in zip(expected.users.to_pylist(), expected.source)}
    assert {u: g["source"].tolist() for u, g in fresh.groupby("user_id")} == sources

    merged = read_arrow("small", "u2i", output=out)
    extended = dataclasses.replace(spec, input=dataclasses.replace(spec.input, require_run_date=False))
    data = prepare(extended, Window(NEXT_DAY, spec.job.lookback_days + 1), root)  # the window and the new day
    pairs = pa.table({"user_id": data.inter.users.values.take(pa.array(data.inter.user_idx)),
                      "item_id": data.inter.items.values.take(pa.array(data.inter.item_idx))})
    pairs = pairs.filter(pc.is_in(pairs["item_id"], value_set=published.item_ids))
    assert u2i_violations(merged, pairs, [], K, set(NAMES)) == []
    nightly = read_table("small", "u2i", output=out, fresh=False)
    others = merged.to_pandas()
    others = others[~others["user_id"].isin(fresh["user_id"])].reset_index(drop=True)
    assert others.equals(nightly[~nightly["user_id"].isin(fresh["user_id"])].reset_index(drop=True))


def readme_query(out: Path, date: str) -> str:
    """The README's DuckDB query that prefers fresh rows, for `out` (a job folder) and `date`."""
    text = (REPO / "README.md").read_text()
    sql = re.search(r"<!-- duckdb-fresh -->\n```sql\n(.*?)```", text, re.S).group(1)
    return sql.replace("data/recall/example", str(out)).replace("2026-11-24", date)


def test_readers_prefer_the_fresh_rows(refreshed_template):
    """The reader API and the README's DuckDB query give the same table: fresh rows for the
    refreshed users, nightly rows for the rest; `fresh=False` and `u2i_fresh` give each alone."""
    root, followed = refreshed_template
    story = followed[0]
    out = recall_out(root)
    job = out / "small"
    merged = read_table("small", "u2i", output=out)
    duck = duckdb.connect().execute(readme_query(job, DATE)).df()
    assert duck.equals(merged), (duck.head(), merged.head())
    nightly = pq.read_table(job / "u2i" / f"dt={DATE}").to_pandas()
    assert read_table("small", "u2i", output=out, fresh=False).equals(nightly)
    overlay = pq.read_table(job / U2I_FRESH / f"dt={DATE}").to_pandas()
    assert read_table("small", U2I_FRESH, output=out).equals(overlay)
    refreshed = set(overlay["user_id"])
    assert set(merged["user_id"]) == set(nightly["user_id"]) | refreshed
    assert merged[merged["user_id"].isin(refreshed)].reset_index(drop=True).equals(overlay)
    assert merged["user_id"].is_monotonic_increasing and merged.groupby("user_id")["rank"].apply(
        lambda r: r.tolist() == list(range(1, len(r) + 1))).all()
    mine = read_table("small", "u2i", output=out, columns=["item_id"])
    assert mine["item_id"].tolist() == merged["item_id"].tolist()
    one = read_arrow("small", "u2i", output=out, where=pc.field("user_id").isin([story.user])).to_pandas()
    assert one.equals(overlay[overlay["user_id"] == story.user].reset_index(drop=True))


def test_each_refresh_holds_every_user_since_the_nightly_run(refreshed):
    root, story = refreshed
    out = out_dir(root)
    first = overlay_users(root)
    window_user = int(min(set(read_table("small", "u2i", output=recall_out(root), fresh=False)["user_id"]) - first))
    known = int(read_table("small", "popular", output=recall_out(root))["item_id"][0])
    land(root, [(window_user, known, "click", "12:00"), (77, known, "view", "12:01"),  # 77: a user new to the job
                (78, 999_999_999, "view", "12:02")])  # 78 only touched an item the nightly run never saw
    was = read_fresh_manifest(JobDir(out), DATE)
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 0 and "published" in res.stdout, res.stderr
    assert overlay_users(root) == first | {window_user, 77}
    m = read_fresh_manifest(JobDir(out), DATE)
    assert m.users["active"] == was.users["active"] + 3 and m.users["new"] == was.users["new"] + 2
    assert m.users["without_known_items"] == was.users["without_known_items"] + 1
    assert m.input["unknown_item_rows"] == was.input["unknown_item_rows"] + 1
    before = published_files(out)
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 0 and "up to date" in res.stdout, res.stderr
    assert published_files(out) == before
    runs = [json.loads(line) for line in (out / "_nearline" / "_history.jsonl").read_text().splitlines()]
    assert [(r["status"], r["exit_code"]) for r in runs] == [("published", 0), ("published", 0), ("up to date", 0)]
    assert staging_left(out / "_nearline") == []


NO_HOLDOUT = ["--set", "evaluate.holdout_days=0"]


def test_nearline_and_nightly_runs_at_the_same_time(refreshed, cli_bg):
    """Each holds its own lock and writes its own files: a refresh runs while a nightly run holds
    the job (on the run already published; readers drop that overlay once the nightly run
    publishes another), waits (75) while the nightly run swaps the date in, and publishes nothing
    (75) when a nightly run published meanwhile; a nightly run never waits for a refresh; two
    refreshes never run at once. The next date supersedes the overlay; retention removes it."""
    root, story = refreshed
    out = out_dir(root)
    job = JobDir(out)
    first_run = read_manifest(job, DATE).run_id

    # a nightly rerun holds the job (paused before its first table is sealed): the refresh runs
    nightly = cli_bg(root, *FORCED, *NO_HOLDOUT, env={"RECALL_TEST_PAUSE_AT": "before-success"})
    wait_for_stderr(nightly, "test pause at before-success")
    res = run_cli(root, "nearline", "small", "--force")
    assert res.returncode == 0 and "published" in res.stdout, res.stderr
    assert read_fresh_manifest(job, DATE).base_run_id == first_run
    done = resume(nightly)
    assert done.returncode == 0, done.stderr
    second_run = read_manifest(job, DATE).run_id
    assert second_run != first_run
    assert_consistent(out, DATE)
    assert read_table("small", "u2i", output=recall_out(root)).equals(
        pq.read_table(out / "u2i" / f"dt={DATE}").to_pandas())  # the overlay of the replaced run is not read
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 0 and "published" in res.stdout
    assert read_fresh_manifest(job, DATE).base_run_id == second_run
    assert lists(read_table("small", "u2i", output=recall_out(root)))[story.user] != \
        lists(read_table("small", "u2i", output=recall_out(root), fresh=False))[story.user]

    # a nightly rerun is swapping the date in (u2i replaced, its manifest not yet written): wait
    before = published_files(out)
    nightly = cli_bg(root, *FORCED, *NO_HOLDOUT, env={"RECALL_TEST_PAUSE_AT": "published-u2i"})
    wait_for_stderr(nightly, "test pause at published-u2i")
    res = run_cli(root, "nearline", "small", "--force")
    assert res.returncode == 75 and f"the nightly run is publishing {DATE}" in one_line(res.stderr)
    assert {k: v for k, v in published_files(out).items() if "_nearline" in k or U2I_FRESH in k} == \
        {k: v for k, v in before.items() if "_nearline" in k or U2I_FRESH in k}
    assert resume(nightly).returncode == 0

    # a refresh holds its lane (paused with its lists staged): another refresh waits (75), the
    # nightly run of the next date does not, and the refresh then publishes nothing (75)
    overlay = read_fresh_manifest(job, DATE)
    refresh = cli_bg(root, "nearline", "small", "--force", env={"RECALL_TEST_PAUSE_AT": "nearline-staged"})
    wait_for_stderr(refresh, "test pause at nearline-staged")
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 75 and "job small (nearline) is already running" in one_line(res.stderr)
    res = run_cli(root, "run", "small", "--date", NEXT, *NO_HOLDOUT, "--set", "output.keep_days=1")
    assert res.returncode == 0, res.stderr
    done = resume(refresh)
    assert done.returncode == 75 and f"the nightly run published {NEXT}" in one_line(done.stderr)
    assert "nothing published" in done.stderr
    assert not (out / U2I_FRESH / f"dt={DATE}").exists(), "the nightly run's retention took the old overlay"
    assert read_fresh_manifest(job, DATE) == overlay  # the dead end published nothing
    assert read_table("small", "u2i", output=recall_out(root)).equals(
        pq.read_table(out / "u2i" / f"dt={NEXT}").to_pandas())  # superseded: the new date has no overlay yet
    assert staging_left(out / "_nearline") == []
    res = run_cli(root, "nearline", "small", "--set", "output.keep_days=1")
    assert res.returncode == 0 and f"small {NEXT}: published u2i_fresh, 0 users" in res.stdout, res.stdout
    assert not (out / "_nearline" / "_manifest" / f"dt={DATE}.json").exists()  # the refresh's own retention


@pytest.mark.parametrize("point", ["nearline-staged", "before-success", "published-u2i_fresh", "before-latest"])
def test_a_refresh_killed_at_any_point_leaves_every_reader_consistent(point, refreshed, cli_bg):
    """Killed with its lists staged, between its data and its _SUCCESS, with its partition swapped
    in but not its manifest (the commit point), or after it: readers get the previous overlay, or
    the nightly rows (a half swap waits for the next refresh to undo it), or the new one, never a
    mix; the nightly tables are untouched; the next refresh puts everything right."""
    root, story = refreshed
    out = out_dir(root)
    job = JobDir(out)
    before = published_files(out)
    seen_before = read_table("small", "u2i", output=recall_out(root))
    old = read_fresh_manifest(job, DATE)
    land(root, [(story.user, story.new[0], "view", "20:00"), (79, story.new[0], "view", "20:01")])
    proc = cli_bg(root, "nearline", "small", env={"RECALL_TEST_PAUSE_AT": point})
    wait_for_stderr(proc, f"test pause at {point}")
    killed(proc)
    nightly_files = {k: v for k, v in published_files(out).items() if "_nearline" not in k and U2I_FRESH not in k}
    assert nightly_files == {k: v for k, v in before.items() if "_nearline" not in k and U2I_FRESH not in k}
    now = read_table("small", "u2i", output=recall_out(root))
    if point in ("nearline-staged", "before-success"):
        assert published_files(out) == before
        assert now.equals(seen_before)
    elif point == "published-u2i_fresh":  # the dead refresh's partition, the previous manifest
        assert overlay_state(job, DATE, old.base_run_id) == (None, False)
        assert now.equals(read_table("small", "u2i", output=recall_out(root), fresh=False))
    else:  # its manifest is written: committed, only its lane's _LATEST lags
        assert read_fresh_manifest(job, DATE).run_id != old.run_id
        assert 79 in set(now["user_id"]) and 79 in overlay_users(root)
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 0, res.stderr
    assert ("up to date" if point == "before-latest" else "published") in res.stdout
    assert staging_left(out / "_nearline") == []
    current, settled = overlay_state(job, DATE, old.base_run_id)
    assert settled and current.run_id != old.run_id and 79 in overlay_users(root)
    assert (out / "_nearline" / "_LATEST").read_text().strip() == DATE


def test_bad_input_after_the_window_exits_3_and_changes_nothing(refreshed):
    root, story = refreshed
    out = out_dir(root)
    before = published_files(out)
    bad = land(root, [(story.user, story.new[0], "like", "09:00")] * 10)  # an event the spec does not weigh: 10 of 625 rows
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 3
    line = one_line(res.stderr)
    assert str(bad) in line and "'event'" in line and "unknown event" in line
    assert published_files(out) == before
    folder = root / "data" / "log" / f"dt={NEXT}"
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([story.user], pa.int64()), "item_id": pa.array(["a1"]),
                             "event": ["view"], "ts": pa.array([pd.Timestamp(f"{NEXT}T09:00", tz="UTC")])}),
                   folder / "part-00000.parquet")
    res = run_cli(root, "nearline", "small")
    assert res.returncode == 3
    assert "item ids after the window are string, but int64 in the published run" in one_line(res.stderr)
    assert published_files(out) == before


def test_refresh_refuses_what_it_cannot_do(project, tmp_path):
    res = run_cli(project, "nearline", "small")
    assert res.returncode == 3 and "nothing published for job small" in one_line(res.stderr)
    write_spec(project, extra='[nearline]\nschedule = "61 * * * *"\n')
    res = run_cli(project, "nearline", "small")
    assert res.returncode == 2 and "[nearline] schedule" in one_line(res.stderr)


def test_an_input_without_day_partitions_is_read_by_time(tmp_path, small_log):
    """Plain files (no dt= folders): the new rows are those timed after the window, wherever they
    are; a late file's rows inside the window are history. Without a time column either, the
    refresh cannot tell new rows and says so (exit 3)."""
    root = tmp_path / "flat"
    (root / "data" / "flat").mkdir(parents=True)
    for day in sorted(small_log.glob("dt=*")):
        shutil.copy(day / "part-00000.parquet", root / "data" / "flat" / f"{day.name[3:]}.parquet")
    write_spec(root)
    flat = ["--set", 'input.path="data/flat"']
    assert run_cli(root, "run", "small", "--date", DATE, *flat, *NO_HOLDOUT).returncode == 0
    window = read_table("small", "u2i", output=recall_out(root), fresh=False)
    a, b = (int(u) for u in sorted(set(window["user_id"]))[:2])
    item = int(read_table("small", "popular", output=recall_out(root))["item_id"][0])
    rows = pa.table({"user_id": pa.array([a, b], pa.int64()), "item_id": pa.array([item, item], pa.int64()),
                     "event": ["click", "click"],
                     "ts": pa.array([pd.Timestamp(f"{DATE}T23:00", tz="UTC"), pd.Timestamp(f"{NEXT}T01:00", tz="UTC")])})
    pq.write_table(rows, root / "data" / "flat" / "late.parquet")
    res = run_cli(root, "nearline", "small", *flat)
    assert res.returncode == 0, res.stderr
    assert overlay_users(root) == {b}
    m = read_fresh_manifest(JobDir(out_dir(root)), DATE)
    assert m.input["rows"] == 1 and m.users_refreshed == 1

    csv = root / "data" / "log.csv"
    csv.write_text("user_id,item_id\n1,2\n3,4\n")
    spec = dataclasses.replace(find_job("small", root).input, path="data/log.csv")
    window = Window(RUN_DATE, 10)
    with pytest.raises(InputError, match="has neither dt= partitions nor a time column"):
        rows_after(locate(spec, window, root), spec, window)


def test_cron_installs_the_refresh_beside_the_nightly_entry(published, tmp_path, capsys):
    write_spec(published, extra='[nearline]\nschedule = "*/5 * * * *"\n')
    spec = published / "jobs" / "small.toml"
    spec.write_text(spec.read_text().replace("[job]\n", '[job]\nschedule = "30 2 * * *"\n'))
    tab = tmp_path / "tab"
    tab.write_text("MAILTO=ops@example.com\n17 * * * * /usr/bin/true # not ours\n")
    assert [e.label for e in schedule.install(published, str(tab))] == ["small", "small (nearline)"]
    lines = tab.read_text().splitlines()
    assert lines[:2] == ["MAILTO=ops@example.com", "17 * * * * /usr/bin/true # not ours"]
    nightly, refresh = lines[2:]
    assert nightly.startswith("30 2 * * * ") and " run jobs/small.toml --catch-up " in nightly
    assert refresh.startswith("*/5 * * * * ") and " nearline jobs/small.toml " in refresh
    assert re.search(r"# recall:[0-9a-f]{8}:small$", nightly) and re.search(r"# recall:[0-9a-f]{8}:small:nearline$", refresh)
    schedule.install(published, str(tab))
    assert tab.read_text().splitlines() == lines  # installed again: the same two entries
    schedule.show(published, str(tab))
    shown = capsys.readouterr().out
    assert "job small: next runs" in shown and "job small (nearline): next runs" in shown
    assert shown.count("; installed in") == 2
    command = refresh.split(" # recall:")[0].split(" ", 5)[5]  # as cron runs it: sh -c, from /, no environment
    done = subprocess.run(["/bin/sh", "-c", command], cwd="/", env={}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert read_fresh_manifest(JobDir(out_dir(published)), DATE) is not None
    assert schedule.remove(published, str(tab)) == 2
    assert tab.read_text().splitlines() == lines[:2]


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return json.loads(answer.read())


def served(port: int, key: str, value: str, timeout: float = 60) -> dict:
    """/healthz once the job is served with `key` (run_id, fresh_run_id) equal to `value`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = get(port, "/healthz")["jobs"]["small"]
            if body[key] == value:
                return body
        except (OSError, KeyError, TypeError):
            pass
        assert time.monotonic() < deadline, f"{key} {value} not served"
        time.sleep(0.1)


def rows_of(frame: pd.DataFrame, user: int) -> list[tuple]:
    mine = frame[frame["user_id"] == user]
    return list(zip(mine["item_id"], mine["score"], mine["rank"], mine["source"]))


def answered(port: int, user: int) -> tuple[bool, list[tuple]]:
    body = get(port, f"/v1/small/u2i/{user}")
    return body["fresh"], [(r["item_id"], np.float32(r["score"]), r["rank"], r["source"]) for r in body["items"]]


def test_serve_answers_refreshed_users_from_the_overlay(refreshed, tmp_path):
    """`recall serve` answers a refreshed user from the overlay and the others from the nightly
    table, loads each new refresh, and drops an overlay once the nightly run it was built on is
    replaced."""
    root, story = refreshed
    out = recall_out(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.err", "w")
    server = subprocess.Popen([sys.executable, "-m", "recall", "--root", str(root), "serve", "--port", str(port),
                               "--workers", "1", "--poll", "0.2", "--cache", str(tmp_path / "cache")],
                              stderr=log, start_new_session=True)
    try:
        job = JobDir(out / "small")
        served(port, "fresh_run_id", read_fresh_manifest(job, DATE).run_id)
        fresh, nightly = read_table("small", U2I_FRESH, output=out), read_table("small", "u2i", output=out, fresh=False)
        other = int(min(set(nightly["user_id"]) - set(fresh["user_id"])))
        assert answered(port, story.user) == (True, rows_of(fresh, story.user))
        assert answered(port, other) == (False, rows_of(nightly, other))
        land(root, [(other, story.new[0], "purchase", "10:00")])
        assert run_cli(root, "nearline", "small").returncode == 0
        served(port, "fresh_run_id", read_fresh_manifest(job, DATE).run_id)
        fresh = read_table("small", U2I_FRESH, output=out)
        assert answered(port, other) == (True, rows_of(fresh, other))
        assert run_cli(root, *FORCED, *NO_HOLDOUT).returncode == 0  # the overlay's nightly run is replaced
        served(port, "run_id", read_manifest(job, DATE).run_id)
        nightly = read_table("small", "u2i", output=out, fresh=False)
        assert answered(port, story.user) == (False, rows_of(nightly, story.user))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
