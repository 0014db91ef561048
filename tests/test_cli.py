"""End to end through the real CLI, as subprocesses, on a small generated log."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from recall.store.reader import read_table
from tests.support.files import manifest, out_dir
from tests.support.project import DATE, write_spec


def published_bytes(out: Path) -> dict[str, bytes]:
    """Every published file (tables, manifests, _LATEST), not the lock or the run history."""
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name not in ("_lock", "_history.jsonl")}


def test_run_publishes_tables_manifest_and_latest(project, cli):
    res = cli(project, "run", "small", "--date", DATE)
    assert res.returncode == 0, res.stderr
    assert "published" in res.stdout
    assert res.stderr == ""  # not a terminal (as under cron): no progress bars, no chatter
    out = project / "data" / "recall" / "small"
    assert (out / "_LATEST").read_text().strip() == DATE
    m = manifest(out_dir(project))
    for table in ("u2i", "i2i", "popular"):
        part = out / table / f"dt={DATE}"
        assert (part / "_SUCCESS").exists()
        assert json.loads((part / "_SUCCESS").read_text())["run_id"] == m["run_id"]
        assert pq.read_table(part / "part-00000.parquet").num_rows == m["tables"][table]["rows"]
    for key in ("job", "date", "spec_hash", "code_version", "libraries", "input", "tables", "metrics",
                "timings", "seed"):
        assert key in m, key
    assert m["input"]["files"] and all(f["rows"] > 0 for f in m["input"]["files"])
    assert set(m["timings"]) >= {"read", "validate", "matrix", "train", "u2i", "i2i", "popular", "publish"}
    assert m["metrics"]["merged"]["recall"] > m["metrics"]["popular_baseline"]["recall"]
    assert not any((out / "_staging").iterdir())
    log = (project / "logs" / "small.log").read_text()
    assert f"job=small date={DATE} run={m['run_id']}" in log


def test_schemas_and_contract_of_published_tables(project, cli):
    assert cli(project, "run", "small", "--date", DATE).returncode == 0
    u2i = read_table("small", "u2i", DATE, output=project / "data" / "recall")
    i2i = read_table("small", "i2i", DATE, output=project / "data" / "recall")
    pop = read_table("small", "popular", DATE, output=project / "data" / "recall")
    part = project / "data" / "recall" / "small" / "u2i" / f"dt={DATE}" / "part-00000.parquet"
    schema = pq.read_schema(part)
    assert [str(t) for t in schema.types] == ["int64", "int64", "float", "int32", "string"]
    assert list(u2i.columns) == ["user_id", "item_id", "score", "rank", "source"]
    assert list(i2i.columns) == ["item_id", "similar_item_id", "score", "rank"]
    assert list(pop.columns) == ["item_id", "score", "rank"]
    # sorted by key then rank, ranks 1..n without gaps, at most k, no duplicates
    assert u2i["user_id"].is_monotonic_increasing
    ranks = u2i.groupby("user_id")["rank"]
    assert (ranks.min() == 1).all() and (ranks.max() == ranks.count()).all() and ranks.count().max() <= 20
    assert not u2i.duplicated(["user_id", "item_id"]).any()
    assert (i2i["item_id"] != i2i["similar_item_id"]).all()
    assert pop["rank"].tolist() == list(range(1, len(pop) + 1))


def test_rerun_is_skipped_and_force_replaces_without_duplicates(project, cli):
    assert cli(project, "run", "small", "--date", DATE).returncode == 0
    first = manifest(out_dir(project))
    again = cli(project, "run", "small", "--date", DATE)
    assert again.returncode == 0 and "already published" in again.stdout
    assert manifest(out_dir(project))["run_id"] == first["run_id"]
    forced = cli(project, "run", "small", "--date", DATE, "--force")
    assert forced.returncode == 0, forced.stderr
    second = manifest(out_dir(project))
    assert second["run_id"] != first["run_id"] and second["forced"] is True
    part = project / "data" / "recall" / "small" / "u2i" / f"dt={DATE}"
    # one run's files only; numbered after the ones replaced, so no name means two things
    assert sorted(p.name for p in part.iterdir()) == ["_SUCCESS", "part-00001.parquet"]
    u2i = read_table("small", "u2i", DATE, output=project / "data" / "recall")
    assert len(u2i) == second["tables"]["u2i"]["rows"] == first["tables"]["u2i"]["rows"]
    assert not u2i.duplicated(["user_id", "item_id"]).any()


def test_duckdb_reads_the_hive_partitioned_u2i_table(project, cli):
    """The README's DuckDB example, run for real."""
    assert cli(project, "run", "small", "--date", DATE).returncode == 0
    out = project / "data" / "recall" / "small"
    latest = (out / "_LATEST").read_text().strip()
    con = duckdb.connect()
    rows, users, max_rank = con.execute(
        f"""
        SELECT count(*), count(DISTINCT user_id), max(rank)
        FROM read_parquet('{out}/u2i/*/*.parquet', hive_partitioning = true)
        WHERE dt = '{latest}'
        """
    ).fetchone()
    m = manifest(out_dir(project), latest)
    assert rows == m["tables"]["u2i"]["rows"]
    assert users == m["input"]["users"]
    assert max_rank == 20


def test_bad_spec_key_exits_2_naming_the_key(project, cli):
    write_spec(project, extra="[model]\nfactor = 3\n", text=(project / "jobs" / "small.toml").read_text()
               .replace("factors = 16", "factor = 16"))
    res = cli(project, "run", "small", "--date", DATE)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "factor" in lines[0] and "did you mean factors" in lines[0]
    assert not (project / "data" / "recall").exists()


def test_bad_set_override_and_bad_date_exit_2(project, cli):
    res = cli(project, "run", "small", "--set", "model.factors=many", "--date", DATE)
    assert res.returncode == 2 and "[model] factors must be an integer" in res.stderr
    res = cli(project, "run", "small", "--date", "2026-13-01")
    assert res.returncode == 2 and "bad date" in res.stderr
    res = cli(project, "run")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_missing_input_exits_3_and_keeps_previous_output(project, cli):
    assert cli(project, "run", "small", "--date", DATE).returncode == 0
    out = project / "data" / "recall" / "small"
    before = published_bytes(out)
    res = cli(project, "run", "small", "--date", DATE, "--force", "--set", 'input.path="data/nothing"')
    assert res.returncode == 3
    assert "input path does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert published_bytes(out) == before


def test_check_verb_validates_without_writing(project, cli):
    res = cli(project, "check", "small", "--date", DATE)
    assert res.returncode == 0, res.stderr
    assert "is valid" in res.stdout and "users x" in res.stdout
    assert not (project / "data" / "recall").exists()


def test_backfill_runs_each_date_in_order_and_status_shows_it(project, cli):
    res = cli(project, "backfill", "small", "--from", "2026-11-18", "--to", DATE)
    assert res.returncode == 0, res.stderr
    out = project / "data" / "recall" / "small"
    assert sorted(p.name for p in (out / "u2i").iterdir()) == [
        "dt=2026-11-18", "dt=2026-11-19", "dt=2026-11-20"]
    assert (out / "_LATEST").read_text().strip() == DATE
    status = cli(project, "status", "small")
    assert status.returncode == 0 and DATE in status.stdout


def test_help_on_every_verb(project, cli):
    for verb in ("run", "backfill", "status", "check", "cron", "generate", "demo"):
        res = cli(project, verb, "--help")
        assert res.returncode == 0 and "usage: recall" in res.stdout, verb


def test_console_script_is_installed_and_works(project):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "recall"
    assert exe.exists(), "the `recall` console script is not installed beside this python"
    res = subprocess.run([str(exe), "--root", str(project), "check", "small", "--date", DATE],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
