"""`recall serve`: read-only HTTP/JSON over the latest published run of each job.

    build     a published run (u2i, i2i, popular, item side) -> a folder of memory-mapped arrays
    packed    a table's rows in zstd blocks of a few keys, decoded per lookup
    snapshot  such a folder opened read-only: the lookups every request makes
    model     its item side and the candidate kernel, loaded on the first fold-in
    loader    the supervisor's side: notices a new run, builds it in a child process, announces it
    follow    a worker's side: opens the announced run and swaps it in
    metrics   request counters shared by the workers, in Prometheus text
    config    what a worker is told by the process that starts it
    app       the ASGI application (routes, limits, JSON answers) each uvicorn worker runs
    main      `recall serve`: the loader and uvicorn with its workers
"""
