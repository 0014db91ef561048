"""`recall serve`: read-only HTTP/JSON over the latest published run of each job.

    build     a published run (u2i, i2i, popular, item side) -> a folder of memory-mapped arrays
    snapshot  such a folder opened read-only: the lookups every request makes
    loader    the supervisor side: notices a new run, builds it in the background, announces it
    metrics   request counters shared by the workers, in Prometheus text
    app       the ASGI application (routes, limits, JSON answers) each uvicorn worker runs
    main      `recall serve`: the loader and uvicorn with its workers
"""
