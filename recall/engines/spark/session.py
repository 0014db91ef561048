"""The Spark session of a run: Java found, the executors' Python set, small-job settings that keep a
local run quick, the spec's [spark] settings on top."""
from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.java_gateway import launch_gateway
from pyspark.sql import SparkSession

from recall.errors import SpecError
from recall.spec.sections import SparkSection

# What the engine sets unless [spark.conf] says otherwise. Arrow batches carry the user partitions
# to the candidate kernel; the UI and its event bookkeeping cost a local run seconds and serve nobody
# under cron; naive times are UTC, as in the local engine; try_* functions make bad values null.
DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "8192",
    "spark.sql.adaptive.enabled": "true",
    "spark.python.worker.reuse": "true",  # a worker keeps the broadcast item side between tasks
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def local_cores(master: str) -> int | None:
    """N of local[N] (all cores for local[*] and local); None for a cluster master."""
    if master == "local" or master.startswith("local[*"):
        return os.cpu_count() or 1
    if master.startswith("local["):
        head = master[len("local["):].split("]")[0].split(",")[0]
        return int(head) if head.isdigit() else None
    return None


def physical_gb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30


def java_home() -> str | None:
    """JAVA_HOME, else the JDK of `java` on PATH, else a Java 17 under /usr/lib/jvm."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java:
        return str(Path(java).resolve().parent.parent)
    found = sorted(glob.glob("/usr/lib/jvm/*17*/bin/java")) or sorted(glob.glob("/usr/lib/jvm/*/bin/java"))
    return str(Path(found[0]).parent.parent) if found else None


# The JVM's own log goes to a file beside the job's log, never to stderr: under cron stderr carries
# only the one-line failure summary (README, "Exit codes").
LOG4J = """\
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %p %c{{1}}: %m%n
"""


def log_config(jvm_log: Path) -> str:
    """A log4j2 file sending the driver's log to `jvm_log`; returns its path."""
    jvm_log.parent.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="recall-log4j2-", suffix=".properties")
    with os.fdopen(fd, "w") as fh:
        fh.write(LOG4J.format(path=jvm_log))
    return path


def spark_session(options: SparkSection, app: str, jvm_log: Path) -> tuple[SparkSession, bool]:
    """The active session (tests, notebooks), else a new one for the spec's master; and whether
    this call created it (then the engine stops it at the end of the run)."""
    # pyspark 4.x asks for pandas < 3 and says so on stderr; the Arrow paths used here work with 3
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    home = java_home()
    if home is None:
        raise SpecError("the Spark engine needs Java (17 or newer): none found on PATH, in JAVA_HOME or "
                        "/usr/lib/jvm", hint="install a JDK 17 (apt-get install openjdk-17-jre-headless) or set "
                                             "JAVA_HOME")
    os.environ.setdefault("JAVA_HOME", home)
    # local executors run this interpreter (this venv); a cluster's are set by its own conf
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = dict(DEFAULTS)
    cores = local_cores(options.master)
    if cores is not None:
        # a local run shuffles little: a few partitions per core instead of 200 empty tasks
        conf["spark.sql.shuffle.partitions"] = str(max(2, 2 * cores))
        conf["spark.default.parallelism"] = str(max(2, 2 * cores))
        # the driver is the executor: a quarter of the machine's memory instead of Spark's 1g
        conf["spark.driver.memory"] = f"{max(1, physical_gb() // 4)}g"
    conf.update(options.conf)
    java = conf.get("spark.driver.extraJavaOptions", "")  # the spec's Java options keep ours
    log4j = log_config(jvm_log)
    conf["spark.driver.extraJavaOptions"] = f"{java} -Dlog4j2.configurationFile=file:{log4j}".strip()
    settings = SparkConf().setMaster(options.master).setAppName(app).setAll(list(conf.items()))
    # the JVM (and the local Python workers it starts) write to the Spark log, not to our stderr:
    # the JVM's own notes (incubator modules, native BLAS lookups) would break the one-line rule
    gateway = None
    if SparkContext._gateway is None:  # a process starts one JVM; a later session reuses it
        with open(jvm_log, "a") as sink:
            gateway = launch_gateway(settings, popen_kwargs={"stdout": sink, "stderr": sink})
    context = SparkContext(conf=settings, gateway=gateway)
    os.unlink(log4j)  # read once, when the JVM started
    return SparkSession(context), True
