"""The engines every engine-parametrised suite runs against: each one must publish the same
tables through the same commit protocol (tests/test_contract.py, tests/test_commit_protocol.py).
A new engine is one entry here."""
from __future__ import annotations

ENGINES = ["local"]


def engine_args(engine: str) -> list[str]:
    """The command-line override that runs a job on `engine`."""
    return ["--set", f'job.engine="{engine}"']
