"""`recall serve`: load every job's newest run, then run uvicorn with the loader in the background.

The command line checks the arguments and the jobs, then becomes `python -m recall.serve.main
SETTINGS` (exec, same pid), so the server and its spawned workers import only the serving code.

One process with `--workers 1`; with more, uvicorn's supervisor spawns the workers on one shared
listening socket and restarts any that dies, while this process (the supervisor) runs the
loader. Workers share the built runs through the page cache (memory maps) and the request
counters through the metrics slots, both under `<cache>/`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import uvicorn
from loguru import logger

from recall.ops.logs import add_serve_log
from recall.serve.config import CONFIG_ENV, Config
from recall.serve.loader import POLL_S, Loader
from recall.store.layout import JobDir

KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 2048  # per worker; beyond it uvicorn answers 503


def serve(jobs: dict[str, JobDir], host: str, port: int, workers: int, cache: Path, poll: float = POLL_S) -> int:
    instance = cache / f"instance-{os.getpid()}"
    loader = Loader(jobs, cache, instance)
    started = time.perf_counter()
    loader.check()
    for name, state in loader.states.items():
        if state.run_id:
            print(f"recall serve: {name} {state.date} run {state.run_id} loaded in {state.load_s:.2f}s",
                  file=sys.stderr)
        else:
            print(f"recall serve: {name}: nothing published yet" + (f" ({state.error})" if state.error else "")
                  + "; answering 503 for it until a run is", file=sys.stderr)
    logger.info(f"serve: {len(jobs)} job(s) loaded in {time.perf_counter() - started:.2f}s; "
                f"listening on http://{host}:{port} with {workers} worker(s)")
    thread, stop = loader.start(poll)
    config = Config(instance, list(jobs))
    os.environ[CONFIG_ENV] = config.to_env()  # what spawned workers build their app from
    options = dict(host=host, port=port, log_level="warning", access_log=False, server_header=False,
                   timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS, lifespan="on")
    try:
        if workers <= 1:
            from recall.serve.app import App  # the serving code, in this process only when it serves

            uvicorn.run(App(config), **options)
        else:
            uvicorn.run("recall.serve.app:create_app", factory=True, workers=workers, **options)
    finally:
        stop.set()
        thread.join(timeout=30)
        shutil.rmtree(instance, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    settings = json.loads(argv[0])
    add_serve_log(Path(settings["root"]))
    jobs = {name: JobDir(Path(path)) for name, path in settings["jobs"].items()}
    return serve(jobs, settings["host"], settings["port"], settings["workers"], Path(settings["cache"]),
                 settings["poll"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
