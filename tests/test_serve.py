"""`recall serve` as a real process on loopback (two workers): answers equal the published tables,
fallback, errors, fold-in equal to the offline kernel, reloads under load with no failed or mixed
answer, and a run that fails to load leaving the old one serving."""
from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import RUN_DATE, run_cli, write_spec
from recall.ingest.prepare import prepare
from recall.ingest.window import Window
from recall.jobs import find_job
from recall.kernel.foldin import FoldIn, fold_batch
from recall.model.matrix import to_csr
from recall.model.popularity import recent_items
from recall.sources import NAMES
from recall.sources.recommend import recommend
from recall.store import item_side
from recall.store.commit import Publication
from recall.store.layout import ITEM_SIDE, JobDir
from recall.store.reader import read_table
from recall.store.records import TableInfo
from recall.store.state import read_manifest

FIRST = (RUN_DATE - dt.timedelta(days=1)).isoformat()
SECOND = RUN_DATE.isoformat()


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def answer(self, method: str, path: str, body: bytes | None = None) -> http.client.HTTPResponse:
        """The response, on a new connection when the server closed an idle one (after 5 s, as a
        keep-alive client expects; the requests here are all safe to send again)."""
        try:
            self.conn.request(method, path, body)
            return self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()
            self.conn.request(method, path, body)
            return self.conn.getresponse()

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        answer = self.answer(method, path, body)
        data = answer.read()
        assert answer.getheader("content-type").startswith("application/json")
        return answer.status, json.loads(data)

    def get(self, path: str) -> tuple[int, dict]:
        return self.call("GET", path)

    def post(self, path: str, payload) -> tuple[int, dict]:
        return self.call("POST", path, json.dumps(payload).encode())

    def text(self, path: str) -> str:
        return self.answer("GET", path).read().decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_log):
    """A project with FIRST published and `recall serve` running on it."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(small_log, root / "data" / "log")
    write_spec(root)
    result = run_cli(root, "run", "small", "--date", FIRST)
    assert result.returncode == 0, result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "serve.err", "w")
    server = subprocess.Popen([sys.executable, "-m", "recall", "--root", str(root), "serve", "--port", str(port),
                               "--workers", "2", "--poll", "0.2"], stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, (root / "serve.err").read_text()
        try:
            if Client(port).get("/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    yield root, port
    os.killpg(server.pid, signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    log.close()


def job_of(root: Path) -> JobDir:
    return JobDir(root / "data" / "recall" / "small")


def table_lists(root: Path, table: str, date: str, key: str) -> dict:
    frame = read_table("small", table, date, output=root / "data" / "recall")
    return {k: group.drop(columns=[key]).to_dict("records") for k, group in frame.groupby(key, sort=False)}


def same_rows(got: list[dict], want: list[dict]) -> bool:
    """Equal rows; scores compared as the float32 the table holds."""
    return len(got) == len(want) and all(
        {**g, "score": np.float32(g["score"])} == {**w, "score": np.float32(w["score"])} for g, w in zip(got, want))


def test_u2i_answers_are_the_tables_rows(served):
    root, port = served
    client = Client(port)
    run_id = read_manifest(job_of(root), FIRST).run_id
    tables = table_lists(root, "u2i", FIRST, "user_id")
    for user, rows in tables.items():
        status, body = client.get(f"/v1/small/u2i/{user}")
        assert status == 200
        assert (body["date"], body["run_id"], body["user_id"], body["fallback"]) == (FIRST, run_id, user, False)
        assert same_rows(body["items"], rows), user
    user, rows = next(iter(tables.items()))
    assert same_rows(client.get(f"/v1/small/u2i/{user}?k=3")[1]["items"], rows[:3])


def test_i2i_and_popular_answers_are_the_tables_rows(served):
    root, port = served
    client = Client(port)
    for item, rows in table_lists(root, "i2i", FIRST, "item_id").items():
        status, body = client.get(f"/v1/small/i2i/{item}")
        assert status == 200 and body["item_id"] == item and same_rows(body["items"], rows)
    popular = read_table("small", "popular", FIRST, output=root / "data" / "recall").to_dict("records")
    status, body = client.get("/v1/small/popular")
    assert status == 200 and body["date"] == FIRST and same_rows(body["items"], popular)
    assert same_rows(client.get("/v1/small/popular?k=4")[1]["items"], popular[:4])


def test_unknown_user_gets_the_popular_list_flagged(served):
    root, port = served
    popular = read_table("small", "popular", FIRST, output=root / "data" / "recall").to_dict("records")
    status, body = Client(port).get("/v1/small/u2i/987654321987?k=5")
    assert status == 200 and body["fallback"] is True and body["user_id"] == 987654321987
    assert same_rows(body["items"], [{**row, "source": "popular"} for row in popular[:5]])


@pytest.mark.parametrize("method,path,body,status,says", [
    ("GET", "/v1/small/i2i/123456789", None, 404, "unknown item"),
    ("GET", "/v1/nojob/u2i/1", None, 404, "unknown job"),
    ("GET", "/v1/..%2F..%2Fetc/u2i/1", None, 404, "unknown job"),
    ("GET", "/v1/small/nothing", None, 404, "no such endpoint"),
    ("GET", "/elsewhere", None, 404, "no such endpoint"),
    ("GET", "/v1/small/u2i/1?k=0", None, 400, "k must be"),
    ("GET", "/v1/small/u2i/1?k=21", None, 400, "k must be an integer from 1 to 20"),
    ("GET", "/v1/small/u2i/1?k=ten", None, 400, "k must be"),
    ("GET", "/v1/small/i2i/1?k=-1", None, 400, "k must be"),
    ("GET", "/v1/small/popular?k=1000", None, 400, "k must be"),
    ("GET", "/v1/small/u2i/not-a-number", None, 400, "user_id must be an integer"),
    ("GET", "/v1/small/i2i/1.5", None, 400, "item_id must be an integer"),
    ("DELETE", "/v1/small/popular", None, 405, "use GET"),
    ("POST", "/v1/small/u2i", b"{not json", 400, "not JSON"),
    ("POST", "/v1/small/u2i", b'{"history": []}', 400, '"items"'),
    ("POST", "/v1/small/u2i", b'{"items": ["a"]}', 400, "integers here"),
    ("POST", "/v1/small/u2i", b'{"items": [1], "weights": [-1]}', 400, "weights"),
    ("POST", "/v1/small/u2i", b'{"items": [1], "k": 0}', 400, "k must be"),
    ("POST", "/v1/small/u2i", json.dumps({"items": list(range(1001))}).encode(), 400, "at most 1000 items"),
    ("POST", "/v1/small/u2i", b'{"items": [' + b"1," * 40000 + b"1]}", 413, "at most 65536 bytes"),
])
def test_errors_are_json_with_their_status(served, method, path, body, status, says):
    _, port = served
    got, answer = Client(port).call(method, path, body)
    assert got == status and answer["status"] == status and says in answer["error"], answer


def test_fold_in_equals_the_offline_kernel(served):
    """A window user's whole history, folded in by the server, gets the list the offline kernel
    gives that folded vector, with their items as the seen filter."""
    root, port = served
    spec = find_job("small", root)
    data = prepare(spec, Window(dt.date.fromisoformat(FIRST), spec.job.lookback_days, spec.job.timezone), root)
    inter = data.inter
    counts = to_csr(inter)
    ordered = recent_items(inter, int(np.diff(counts.indptr).max()))  # each user's items, most recent first
    published = item_side.load(job_of(root).partition(ITEM_SIDE, FIRST))
    fold = FoldIn.of(published.side.factors, published.fold, published.weight_sum)
    ids = published.item_ids.to_pylist()
    client = Client(port)
    for user in np.random.default_rng(0).choice(counts.shape[0], 25, replace=False):
        history = ordered[user][ordered[user] >= 0]
        weights = np.asarray(counts[user].toarray()[0, history], np.float64)
        status, body = client.post("/v1/small/u2i", {"items": [ids[i] for i in history], "weights": weights.tolist()})
        assert status == 200 and body["fallback"] is False and body["known_items"] == len(history)
        batch = fold_batch(fold, [(history, weights)], published.recent_items, len(ids))
        merged = recommend(published.side, batch, published.blend, published.k)
        valid = merged.items[0] >= 0
        assert [r["item_id"] for r in body["items"]] == [ids[i] for i in merged.items[0][valid]]
        assert [r["source"] for r in body["items"]] == [NAMES[c] for c in merged.source[0][valid]]
        np.testing.assert_allclose([r["score"] for r in body["items"]], merged.scores[0][valid], rtol=1e-4)
        assert not {r["item_id"] for r in body["items"]} & {ids[i] for i in history}
    status, body = client.post("/v1/small/u2i?k=4", {"items": [-5, -6]})  # nothing known: the fallback
    assert status == 200 and body["fallback"] is True and body["unknown_items"] == 2 and len(body["items"]) == 4


def test_reloads_under_load_never_fail_nor_mix_runs(served):
    """Clients hammer u2i while a new date is published and then rerun with other settings
    (--force): every answer is 200 and is exactly the table of the run it names."""
    root, port = served
    job = job_of(root)
    users = list(table_lists(root, "u2i", FIRST, "user_id"))[:60]
    runs = {read_manifest(job, FIRST).run_id: table_lists(root, "u2i", FIRST, "user_id")}
    answers, stop = [], threading.Event()

    def hammer(offset: int) -> None:
        client = Client(port)
        i = offset
        while not stop.is_set():
            user = users[i % len(users)]
            status, body = client.get(f"/v1/small/u2i/{user}")
            answers.append((status, user, body.get("date"), body.get("run_id"), body.get("items")))
            i += 2

    clients = [threading.Thread(target=hammer, args=(n,)) for n in range(2)]
    for t in clients:
        t.start()
    try:
        for args in (["--date", SECOND], ["--date", SECOND, "--force", "--set", "model.factors=8"]):
            result = run_cli(root, "run", "small", *args)
            assert result.returncode == 0, result.stderr
            run_id = read_manifest(job, SECOND).run_id
            runs[run_id] = table_lists(root, "u2i", SECOND, "user_id")
            wait_served(port, run_id)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert len(runs) == 3 and len(answers) > 100
    assert all(a[0] == 200 for a in answers), [a for a in answers if a[0] != 200][:3]
    assert {a[3] for a in answers} == set(runs), "every run was served"
    for status, user, date, run_id, items in answers:
        assert same_rows(items, runs[run_id][user]), (user, run_id)
    assert wait_served(port, list(runs)[-1])["date"] == SECOND
    assert f'recall_serve_reloads_total{{job="small"}} 2' in Client(port).text("/metrics")


def test_a_run_that_fails_to_load_leaves_the_old_one_serving(served):
    root, port = served
    job = job_of(root)
    serving = read_manifest(job, SECOND).run_id
    broken = republish(job, SECOND, "broken", settings={"format": 99})
    deadline = time.monotonic() + 20
    while 'recall_serve_reload_failing{job="small"} 1' not in (metrics := Client(port).text("/metrics")):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.1)
    assert 'recall_serve_reload_failures_total{job="small"} 1' in metrics
    assert f'recall_serve_loaded_info{{job="small",date="{SECOND}",run_id="{serving}"}} 1' in metrics
    status, body = Client(port).get(f"/v1/small/u2i/{next(iter(table_lists(root, 'u2i', SECOND, 'user_id')))}")
    assert status == 200 and body["run_id"] == serving
    log = (root / "serve.err").read_text()
    assert f"run {broken} of {SECOND} failed to load; still serving run {serving}" in log
    fixed = republish(job, SECOND, "fixed", settings={"format": item_side.FORMAT})
    wait_served(port, fixed)
    deadline = time.monotonic() + 5  # every worker takes the new state within its poll (0.2 s)
    while 'recall_serve_reload_failing{job="small"} 0' not in (metrics := Client(port).text("/metrics")):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.05)


def wait_served(port: int, run_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = Client(port).get("/healthz")
        if status == 200 and body["jobs"]["small"]["run_id"] == run_id:
            return body["jobs"]["small"]
        assert time.monotonic() < deadline, f"run {run_id} not served: {body}"
        time.sleep(0.05)


def republish(job: JobDir, date: str, tag: str, settings: dict | None = None) -> str:
    """The date's run published again under a new run id through the commit protocol, its item
    side's settings.json rewritten (new run id, `settings` merged in)."""
    manifest = read_manifest(job, date)
    run_id = f"{manifest.run_id}-{tag}"
    publication = Publication(job, run_id, date)
    tables = {}
    for table in manifest.tables:
        source, staged = job.partition(table, date), publication.folder(table)
        for name in json.loads((source / "_SUCCESS").read_text())["files"]:
            if table == ITEM_SIDE and name == "settings.json":
                old = json.loads((source / name).read_text())
                (staged / name).write_text(json.dumps({**old, "run_id": run_id, **(settings or {})}))
            else:
                shutil.copy(source / name, staged / name)
        sealed = publication.seal(table)
        tables[table] = TableInfo(sealed.rows, sealed.files)
    publication.publish(dataclasses.replace(manifest, run_id=run_id, tables=tables), keep_days=14)
    shutil.rmtree(job.staging(run_id), ignore_errors=True)
    return run_id


def test_serve_refuses_a_bad_command_line(project, cli, tmp_path):
    result = cli(project, "serve", "--workers", "0")
    assert result.returncode == 2 and "--workers must be from 1 to 64" in result.stderr
    result = cli(project, "serve", "nosuchjob")
    assert result.returncode == 2 and "nosuchjob" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(empty, "serve")
    assert result.returncode == 2 and "no job to serve" in result.stderr
