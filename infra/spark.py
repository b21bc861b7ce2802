"""Spark sessions for pairlake: local mode by default, any master by config, on 127.0.0.1 by default.

The driver binds to ``spark.bind_address`` and is reached at ``spark.driver_host`` (loopback
unless configured), executors run the driver's Python (the venv, so they have pyarrow and the
project), the Delta data source is registered, and the session is always stopped:
a driver that ran a Python data source write and exited without ``spark.stop()`` aborted here.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
from pyspark.errors.exceptions.captured import PythonException
from pyspark.sql import DataFrame, SparkSession

from infra.config import ConfigError, InputError, SparkConfig
from infra import lake_storage, spark_cds
from infra.delta_store import Lake, LakeError, Lineage
from infra.spark_delta import FORMAT, DeltaDataSource, lineage_option
from infra.tables import TableSpec

_PROJECT_PACKAGES = ("infra", "spark_jobs", "gpu_jobs")
_SHIPPED_SUFFIXES = (".py", ".json")

def _project_zip() -> str:
    """The project's code zipped, for executors on remote workers that lack the install: its
    modules and the model configs (data the modules read), not the demo's weights. The zip lives
    until this process exits: the driver serves it to executors as they start."""
    root = Path(__file__).resolve().parent.parent
    folder = tempfile.mkdtemp(prefix="pairlake-pyfiles-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    out = Path(folder) / "pairlake.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for package in _PROJECT_PACKAGES:
            for path in sorted((root / package).rglob("*")):
                if path.suffix in _SHIPPED_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(root).as_posix())
    return str(out)

_MASTER_PROBE_S = 5.0


def _check_master(master: str) -> None:
    """A standalone master (``spark://h1:7077[,h2:7077]``) that nobody answers fails here in one
    line, at once: Spark itself retries for over a minute and then reports a stopped context."""
    if not master.startswith("spark://"):
        return  # local, yarn, k8s: Spark's own errors name the problem
    refused = []
    for address in master.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=_MASTER_PROBE_S):
                return
        except (OSError, ValueError) as exc:
            refused.append(f"{address} ({exc.strerror or exc})" if isinstance(exc, OSError) else f"{address} (bad port)")
    raise ConfigError(f"spark.master {master}: no Spark master answers at {', '.join(refused)}")


def build_spark_session(config: SparkConfig) -> SparkSession:
    _check_master(config.master)
    os.environ.setdefault("SPARK_LOCAL_IP", config.bind_address)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master(config.master)
        .appName(config.app_name)
        .config("spark.driver.host", config.driver_host)
        .config("spark.driver.bindAddress", config.bind_address)
        .config("spark.pyspark.python", sys.executable)
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.arrow_batch_rows))
        .config("spark.sql.execution.arrow.maxBytesPerBatch", str(config.arrow_batch_mb * 2**20))
        .config("spark.sql.session.timeZone", "UTC")
        # The driver JVM compiles with C1 only: pairlake's work runs in Python workers and the JVM
        # mostly relays Arrow batches, so C2's compiling did not pay back (docs/benchmarks.md).
        .config("spark.driver.extraJavaOptions",
                f"-Dlog4j.rootLogger=WARN -XX:TieredStopAtLevel=1 {spark_cds.java_options()}".strip())
    )
    if config.master.startswith("local"):
        # Executors run this installation: their Python workers fork from a daemon that has the
        # Delta I/O libraries imported (infra/spark_worker_daemon.py). Elsewhere executors may have
        # the project only as the zip added below, which a daemon cannot start from.
        builder = builder.config("spark.python.daemon.module", "infra.spark_worker_daemon")
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    spark.dataSource.register(DeltaDataSource)
    if not config.master.startswith("local"):
        spark.sparkContext.addPyFile(_project_zip())
    return spark

_shared: SparkSession | None = None


def shared_spark_session(config: SparkConfig) -> SparkSession:
    """One session per process, reused by every step that runs in it, stopped when Python exits.

    Starting Spark costs ~10 s, so an in-process Dagster run shares one session across its steps.
    """
    global _shared
    if _shared is None or _shared.sparkContext._jsc is None:
        _shared = build_spark_session(config)
        atexit.register(_shared.stop)
    return _shared


@contextmanager
def spark_session(config: SparkConfig) -> Iterator[SparkSession]:
    """A session that is stopped on exit, whatever happens inside."""
    spark = build_spark_session(config)
    try:
        yield spark
    finally:
        spark.stop()

def read_table(
    spark: SparkSession,
    lake: Lake,
    spec: TableSpec,
    version: int | None = None,
    partitions: Iterable[str] | None = None,
    columns: Iterable[str] | None = None,
    where: dict[str, Iterable[Any]] | None = None,
    tasks_per_core: int = 1,
) -> DataFrame:
    """``spec`` at ``version`` (latest when None) as a DataFrame, optionally only some partitions,
    only some columns and only rows whose column holds one of the given values (``where``, as
    ``{"status": ["ok"]}``). Only those columns are read, and files and row groups whose partition
    or statistics exclude the values are skipped.

    A read smaller than a split per core is split into at least ``tasks_per_core`` tasks per core:
    where each row costs much (CLIP), more and smaller tasks even out the cores' shares."""
    reader = (
        spark.read.format(FORMAT).option("root", lake.root).option("storage", lake_storage.to_json(lake.storage))
        .option("table", spec.name)
        # Files are packed into read tasks as Spark packs its own Parquet scans.
        .option("split_bytes", str(_bytes(spark.conf.get("spark.sql.files.maxPartitionBytes"))))
        .option("parallelism", str(spark.sparkContext.defaultParallelism * tasks_per_core))
    )
    if columns is not None:
        reader = reader.option("columns", json.dumps(list(columns)))
    if where:
        reader = reader.option("where", json.dumps({column: list(values) for column, values in where.items()}))
    if version is not None:
        reader = reader.option("version", str(version))
    if partitions is not None:
        reader = reader.option("partitions", json.dumps(sorted(set(partitions))))
    return reader.load()


def _bytes(setting: str) -> int:
    """A Spark size setting ("134217728b", "128m", "1g") in bytes."""
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = setting.strip().lower().removesuffix("b") or "0"
    if text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def write_table(
    df: DataFrame,
    lake: Lake,
    spec: TableSpec,
    lineage: Lineage,
    replace_partitions: Iterable[str] | None = None,
) -> int:
    """Write ``df`` into ``spec`` in one Delta commit; returns the new version.

    With ``replace_partitions`` exactly those partitions are replaced; otherwise the table is
    overwritten whole (partitioned tables must name their partitions: an accidental full overwrite
    of a partitioned table is refused).
    """

    if spec.partition_by and replace_partitions is None:
        raise ValueError(f"table {spec.name} is partitioned: name the partitions to replace")
    lake.ensure_writable()
    if spec.partition_by:
        # Each task's rows grouped by partition: its writer then holds one file open at a time.
        df = df.sortWithinPartitions(*spec.partition_by)
    writer = (
        df.write.format(FORMAT)
        .mode("overwrite")
        .option("root", lake.root)
        .option("storage", lake_storage.to_json(lake.storage))
        .option("table", spec.name)
        .option("lineage", lineage_option(lineage))
    )
    if replace_partitions is not None:
        writer = writer.option("replace_partitions", json.dumps(sorted(set(replace_partitions))))
    try:
        writer.save()
    except PythonException as exc:
        raise _task_error(exc) from None
    return lake.version(spec)  # type: ignore[return-value]


def collect(df: DataFrame) -> pa.Table:
    """``df``'s rows on the driver, for small results (a summary row per task); a task's
    InputError is raised as itself, as by write_table."""
    try:
        return df.toArrow()
    except PythonException as exc:
        raise _task_error(exc) from None


# The last "module.Class: message" line of a Python traceback that Spark relays from a task.
_RAISED = re.compile(r"^((?:[A-Za-z_]\w*\.)+)([A-Za-z_]\w*): (.*)$", re.MULTILINE)


def _task_error(exc: PythonException) -> Exception:
    """A task's InputError (a bad config, a bad input) or LakeError (a store that stopped
    answering) as itself, one line; anything else as Spark reported it. Spark aborts the write
    first, so nothing of it was committed."""
    for module, name, message in reversed(_RAISED.findall(str(exc))):
        try:
            cls = getattr(importlib.import_module(module.rstrip(".")), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, (InputError, LakeError)):
            return cls(message.strip())
        break
    return exc
