"""The engines every engine-parametrised suite runs against: each one must publish the same
tables through the same commit protocol (tests/test_contract.py, tests/test_commit_protocol.py).
A new engine is one entry here."""
from __future__ import annotations

ENGINES = ["local", "spark"]

# What a Spark run of the suites adds: CI's two cores; the JVM's quick (C1) compiler only, which
# halves a run of seconds (README, "The Spark engine"); and no holdout evaluation, which these
# suites do not look at (a second ALS fit is most of a small Spark run; tests/test_spark.py's
# parity test runs the holdout on Spark).
SPARK = ["--set", 'spark.master="local[2]"', "--set", "evaluate.holdout_days=0",
         "--set", 'spark.conf={"spark.driver.extraJavaOptions" = "-XX:TieredStopAtLevel=1"}']
QUICK_JVM = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}


def engine_args(engine: str) -> list[str]:
    """The command-line override that runs a job on `engine`."""
    return ["--set", f'job.engine="{engine}"', *(SPARK if engine == "spark" else [])]
