"""The ASGI application every uvicorn worker runs: routes, limits, JSON answers.

    GET  /v1/{job}/u2i/{user_id}?k=N   the user's u2i rows, from the nearline overlay when it holds
                                       the user ("fresh": true); an unknown user gets the popular
                                       list ("fallback": true)
    POST /v1/{job}/u2i                 {"items": [...most recent first], "weights": [...]?, "k": N?}:
                                       the list the nightly kernel gives that history (fold-in)
    GET  /v1/{job}/i2i/{item_id}?k=N   the item's i2i rows; unknown item: 404
    GET  /v1/{job}/popular?k=N         the popular table
    GET  /healthz                      200 when every job serves a run, else 503
    GET  /metrics                      Prometheus text

Every answer is a JSON object carrying the job, `date` and `run_id` it was served from; errors
are {"error": ..., "status": ...}. Ids are typed as in the table: an integer table takes integer
ids (400 otherwise). Request data is only ever looked up in memory, never used as a path.

A plain ASGI callable rather than a framework: measured on this machine, Starlette's routing and
request objects cost ~10% of the throughput of a 100-row u2i lookup and add nothing used here.
"""
from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import parse_qsl, unquote_to_bytes

import numpy as np
import orjson
from loguru import logger

from recall.serve import metrics
from recall.serve.config import Config
from recall.serve.follow import Follower
from recall.serve.snapshot import Snapshot

MAX_BODY = 64 * 1024  # bytes of a POST body
MAX_HISTORY = 1000  # items of a fold-in history
MAX_FOLD_K = 1000  # k of a fold-in
INT_RE = re.compile(r"-?[0-9]{1,19}")
INT64 = (-(2 ** 63), 2 ** 63 - 1)
JSON = [(b"content-type", b"application/json")]
TEXT = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


class Problem(Exception):
    """An answer other than 200, with its JSON error body."""

    def __init__(self, status: int, message: str, headers: list | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or []


def create_app() -> App:
    """uvicorn's factory in each worker process (the config comes from the environment)."""
    return App(Config.from_env())


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.jobs = set(config.jobs)
        self.follower = Follower(config.instance, config.jobs)
        self.counters = metrics.Counters(config.instance / "metrics", metrics.Layout(config.jobs))
        self._follow: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.follower.follow_once()  # serve from the first request on
                self._follow = asyncio.create_task(self.follower.follow())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._follow is not None:
                    self._follow.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope, receive, send) -> None:
        started = time.perf_counter()
        where, headers = ["", "other"], JSON  # job and endpoint, as far as routing got
        try:
            body = await self.route(scope, receive, where)
            status = 200
            if where[1] == "metrics":
                headers = TEXT
        except Problem as problem:
            status, headers = problem.status, JSON + problem.headers
            body = orjson.dumps({"error": str(problem), "status": problem.status})
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, the worker goes on
            logger.opt(exception=exc).error(f"serve: {scope['method']} {scope['path']} failed")
            status, body = 500, orjson.dumps({"error": "internal error", "status": 500})
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        self.counters.request(where[0], where[1], metrics.code_of(status), time.perf_counter() - started)

    async def route(self, scope, receive, where: list) -> bytes:
        """The answer's body; fills `where` with the job and endpoint once known (for the counters)."""
        method = scope["method"]
        parts = segments(scope)
        if len(parts) == 1 and parts[0] in ("healthz", "metrics"):
            where[1] = parts[0]
            allow(method, "GET")
            return self.healthz() if parts[0] == "healthz" else self.metrics_text()
        if len(parts) < 3 or parts[0] != "v1" or parts[2] not in ("u2i", "i2i", "popular"):
            raise Problem(404, "no such endpoint: /v1/{job}/u2i/{user_id}, /v1/{job}/i2i/{item_id}, "
                               "/v1/{job}/popular, POST /v1/{job}/u2i, /healthz, /metrics")
        job, table, rest = parts[1], parts[2], parts[3:]
        if job not in self.jobs:
            raise Problem(404, f"unknown job {job!r}; served: {', '.join(sorted(self.jobs))}")
        where[0] = job
        where[1] = "u2i_foldin" if table == "u2i" and not rest else table
        snap = self.follower.snapshots.get(job)  # this request's run, whatever is swapped in meanwhile
        if snap is None:
            raise Problem(503, f"nothing published for job {job} yet")
        query = scope["query_string"]
        if table == "u2i" and len(rest) == 1:
            allow(method, "GET")
            return self.u2i(snap, rest[0], query)
        if table == "u2i" and not rest:
            allow(method, "POST")
            body = await read_body(scope, receive)
            return self.foldin(snap, body, query)
        if table == "i2i" and len(rest) == 1:
            allow(method, "GET")
            return self.i2i(snap, rest[0], query)
        if table == "popular" and not rest:
            allow(method, "GET")
            return self.popular(snap, query)
        raise Problem(404, f"no such endpoint under /v1/{job}/{table}")

    # --- the answers -------------------------------------------------------------------

    def u2i(self, snap: Snapshot, raw_id: str, query: bytes) -> bytes:
        k = parse_k(query, snap.u2i_width)
        user = parse_id(raw_id, snap.integer_users, "user_id")
        found = snap.u2i_rows(user, k)  # a refreshed user's fresh rows, else the nightly ones
        if found is None:
            self.counters.fell_back(snap.job)
            return answer(snap, {"user_id": user, "fallback": True, "fresh": False}, popular_rows(snap, k))
        fresh, (items, scores, sources) = found
        flags = {"fresh": True, "fresh_run_id": snap.fresh_run_id} if fresh else {"fresh": False}
        return answer(snap, {"user_id": user, "fallback": False, **flags}, u2i_rows(snap, items, scores, sources))

    def i2i(self, snap: Snapshot, raw_id: str, query: bytes) -> bytes:
        if snap.i2i is None:
            raise Problem(404, f"job {snap.job} publishes no i2i table")
        k = parse_k(query, snap.i2i.width)
        item = parse_id(raw_id, snap.integer_items, "item_id")
        found = snap.i2i.find(item, k)
        if found is None:
            raise Problem(404, f"unknown item {item!r} in {snap.job} {snap.date}")
        items, scores, _ = found
        ids = snap.item_values
        rows = [{"similar_item_id": ids[i], "score": s, "rank": r}
                for r, (i, s) in enumerate(zip(items.tolist(), scores.tolist()), 1)]
        return answer(snap, {"item_id": item}, rows)

    def popular(self, snap: Snapshot, query: bytes) -> bytes:
        k = parse_k(query, len(snap.popular_item))
        return answer(snap, {}, popular_rows(snap, k, flagged=False))

    def foldin(self, snap: Snapshot, body: bytes, query: bytes) -> bytes:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Problem(400, f"the body is not JSON: {exc}") from None
        if not isinstance(request, dict) or not isinstance(request.get("items"), list):
            raise Problem(400, 'the body must be an object with "items": [item ids, most recent first]')
        items, weights = request["items"], request.get("weights")
        if len(items) > MAX_HISTORY:
            raise Problem(400, f"at most {MAX_HISTORY} items in a history, got {len(items)}")
        if weights is not None and (not isinstance(weights, list) or len(weights) != len(items) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and np.isfinite(w) and w > 0 for w in weights)):
            raise Problem(400, '"weights" must be positive numbers, one per item')
        limit = min(MAX_FOLD_K, snap.model.allowed_count)
        k = request.get("k", None)
        if k is None:
            k = parse_k(query, limit, default=min(snap.k, limit))
        elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
            raise Problem(400, f"k must be an integer from 1 to {limit}")
        index = [snap.items.find(typed_id(item, snap.integer_items)) for item in items]
        known = [i for i, at in enumerate(index) if at >= 0]
        extra = {"known_items": len(known), "unknown_items": len(items) - len(known)}
        if not known:
            self.counters.fell_back(snap.job)
            return answer(snap, {**extra, "fallback": True}, popular_rows(snap, k))
        history = np.array([index[i] for i in known], np.int64)
        w = None if weights is None else np.array([weights[i] for i in known], np.float64)
        folded = snap.model.recommend(history, w, k)
        return answer(snap, {**extra, "fallback": False}, u2i_rows(snap, folded.items, folded.scores, folded.source))

    def healthz(self) -> bytes:
        jobs = {job: ({"date": s.date, "run_id": s.run_id, "fresh_run_id": s.fresh_run_id}
                      if (s := self.follower.snapshots.get(job)) else None)
                for job in self.config.jobs}
        missing = [job for job, served in jobs.items() if served is None]
        if missing:
            raise Problem(503, f"nothing served yet for {', '.join(missing)}")
        return orjson.dumps({"status": "ok", "jobs": jobs})

    def metrics_text(self) -> bytes:
        loaded = []
        for job in self.config.jobs:
            state = dict(self.follower.states.get(job) or {"job": job})
            snap = self.follower.snapshots.get(job)
            state.update(job=job, date=snap.date if snap else "", run_id=snap.run_id if snap else "",
                         fresh_run_id=snap.fresh_run_id if snap else "")
            loaded.append(state)
        return metrics.text(self.counters, loaded).encode()


# --- request parsing ---------------------------------------------------------------------


def segments(scope) -> list[str]:
    """The path's segments, each percent-decoded on its own (an id may hold an encoded '/')."""
    raw = scope.get("raw_path") or scope["path"].encode()
    try:
        return [unquote_to_bytes(p).decode("utf-8") for p in raw.split(b"?", 1)[0].split(b"/")[1:]]
    except UnicodeDecodeError:
        raise Problem(400, "the path is not UTF-8") from None


def allow(method: str, wanted: str) -> None:
    if method != wanted:
        raise Problem(405, f"use {wanted}", [(b"allow", wanted.encode())])


def parse_k(query: bytes, limit: int, default: int | None = None) -> int:
    """?k=N, from 1 to `limit` (the longest list there is); default `limit`."""
    if not query:
        return default or limit
    try:
        values = [v for name, v in parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True)
                  if name == "k"]
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "bad query string") from None
    if not values:
        return default or limit
    text = values[-1]
    if not text.isdigit() or not 1 <= int(text) <= limit:
        raise Problem(400, f"k must be an integer from 1 to {limit}, got {text[:40]!r}")
    return int(text)


def parse_id(text: str, integer: bool, name: str) -> int | str:
    """A path id in the table's type: an integer table takes integers only."""
    if not integer:
        return text
    if not INT_RE.fullmatch(text) or not INT64[0] <= int(text) <= INT64[1]:
        raise Problem(400, f"{name} must be an integer here, got {text[:40]!r}")
    return int(text)


def typed_id(value, integer: bool) -> int | str:
    """A JSON id in the table's type."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or not INT64[0] <= value <= INT64[1]:
            raise Problem(400, f"item ids are integers here, got {str(value)[:40]!r}")
        return value
    if not isinstance(value, str):
        raise Problem(400, f"item ids are strings here, got {str(value)[:40]!r}")
    return value


async def read_body(scope, receive) -> bytes:
    """The request body, refused (413) past MAX_BODY before it is read whole."""
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY):
            raise Problem(413, f"the body may hold at most {MAX_BODY} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Problem(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Problem(413, f"the body may hold at most {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


# --- rendering ---------------------------------------------------------------------------


def popular_rows(snap: Snapshot, k: int, flagged: bool = True) -> list[dict]:
    """The popular table's first k rows; as a u2i fallback (`flagged`) with source "popular"."""
    k = min(k, len(snap.popular_item))
    ids = snap.item_values
    rows = [{"item_id": ids[i], "score": s, "rank": r}
            for r, (i, s) in enumerate(zip(snap.popular_item[:k].tolist(), snap.popular_score[:k].tolist()), 1)]
    if flagged:
        for row in rows:
            row["source"] = "popular"
    return rows


def u2i_rows(snap: Snapshot, items: np.ndarray, scores: np.ndarray, sources: np.ndarray) -> list[dict]:
    ids, names = snap.item_values, snap.source_names
    return [{"item_id": ids[i], "score": s, "rank": r, "source": names[c]}
            for r, (i, s, c) in enumerate(zip(items.tolist(), scores.tolist(), sources.tolist()), 1)]


def answer(snap: Snapshot, fields: dict, rows: list[dict]) -> bytes:
    return orjson.dumps({"job": snap.job, "date": snap.date, "run_id": snap.run_id, **fields, "items": rows})
