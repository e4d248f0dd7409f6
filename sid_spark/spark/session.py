"""SparkSession construction with the classic traps handled: java missing, workers on another Python."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from pyspark.sql import SparkSession


class JavaMissingError(RuntimeError):
    pass


def check_java() -> None:
    """Fail with one clear line when no Java 17+ is on PATH/JAVA_HOME (Spark 4 needs it)."""
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not os.path.exists(java):
        raise JavaMissingError("java not found: Spark 4 needs Java 17 or newer (e.g. `apt-get install openjdk-17-jre-headless`"
                               " or set JAVA_HOME)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    for token in out.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and token[0].isdigit():
            if int(head) < 17:
                raise JavaMissingError(f"Java {token} found at {java}: Spark 4 needs Java 17 or newer")
            return


def get_session(master: str | None = "local[*]", app_name: str = "sid_spark", conf: dict | None = None,
                arrow_batch_rows: int | None = None) -> SparkSession:
    """The session jobs and the demo use. Workers run this very interpreter unless PYSPARK_PYTHON says otherwise.
    `arrow_batch_rows` (the config key) is the default Arrow batch size; a profile or --conf still wins."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master and not os.environ.get("SID_SPARK_SUBMITTED"):
        builder = builder.master(master)
    defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(int(arrow_batch_rows or 16384)),
        "spark.sql.shuffle.partitions": "8",
        "spark.ui.enabled": "false",
        # sid_spark logs one progress line per iteration / round (sid_spark.progress); Spark's console bar would
        # interleave with them. A profile or --conf that sets it wins.
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": os.environ.get("SID_SPARK_DRIVER_MEMORY", "4g"),
    }
    if os.environ.get("SID_SPARK_SUBMITTED") and os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Under spark-submit (its JVM is up) a builder option would override the operator's --properties-file /
        # --conf: our defaults only fill the keys they left unset.
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()
        given = SparkConf()
        defaults = {k: v for k, v in defaults.items() if not given.contains(k)}
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    if not _is_active():
        check_java()
    return builder.getOrCreate()


def _is_active() -> bool:
    return SparkSession.getActiveSession() is not None

