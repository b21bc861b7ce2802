"""A class-data-sharing archive of the Spark driver JVM's classes (Java's dynamic AppCDS).

Starting a local Spark session costs ~25 CPU-s here, most of it the JVM loading and verifying
Spark's classes. Archived once (a session run with ``-XX:ArchiveClassesAtExit``), they are mapped
from the archive at every later start: 25.2 -> 14.7 CPU-s and 15.4 -> 8.6 s a session, measured
(docs/benchmarks.md). ``make setup`` builds it (``python -m infra.spark_cds``); sessions use it when
it is there.

An archive is valid for one JDK and one class path, so its name is derived from the Java
executable, the venv and pyspark's version. One that does not match anyway (a JDK upgraded in
place) is ignored by the JVM, and its warning is turned off: it only costs the speed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ARCHIVE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "spark-cds"
_QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def archive_path() -> Path:
    """Where the archive for this JDK, venv and pyspark lives."""
    java_home = os.environ.get("JAVA_HOME")  # where pyspark's launcher takes java from, else PATH
    java = shutil.which("java", path=os.path.join(java_home, "bin") if java_home else None)
    key = "|".join((os.path.realpath(java or "java"), sys.prefix, version("pyspark")))
    return ARCHIVE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


def java_options() -> str:
    """The driver JVM's options that map the archive, or "" when there is none."""
    archive = archive_path()
    return f"-XX:SharedArchiveFile={archive} {_QUIET}" if archive.is_file() else ""


def build() -> Path:
    """The archive, dumped first by a local session in a child process when it is missing."""
    archive = archive_path()
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(f".{os.getpid()}.partial")
    try:
        subprocess.run([sys.executable, "-m", "infra.spark_cds", "--dump", str(partial)], check=True,
                       capture_output=True, timeout=600)
        os.replace(partial, archive)  # whole or not at all: sessions never map a half-written file
    finally:
        partial.unlink(missing_ok=True)
    return archive


def _dump(out: str) -> None:
    """Run the classes a session and a first few jobs load, then exit the JVM, which writes them."""
    from infra.config import SparkConfig
    from infra.spark import build_spark_session

    conf = {"spark.driver.extraJavaOptions": f"-Dlog4j.rootLogger=WARN -XX:ArchiveClassesAtExit={out} {_QUIET}"}
    spark = build_spark_session(SparkConfig(app_name="pairlake-cds", conf=conf))
    frame = spark.createDataFrame([(i, str(i)) for i in range(1000)], "a long, b string")
    frame.groupBy((frame.a % 7).alias("k")).count().collect()
    frame.mapInArrow(lambda batches: batches, frame.schema).count()
    jvm = spark.sparkContext._gateway.proc  # type: ignore[attr-defined]
    spark.stop()
    jvm.stdin.close()  # the gateway JVM exits at the end of its stdin, and dumps the archive as it exits
    jvm.wait(timeout=300)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dump"]:
        _dump(sys.argv[2])
    else:
        try:
            print(build())
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            # Only a speed-up: setup goes on, and sessions start without it. OSError: the JVM
            # exited without writing it (driver options replaced, e.g. by PYSPARK_SUBMIT_ARGS).
            stderr = getattr(exc, "stderr", None) or b""
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
            print(f"no Spark class archive ({detail[0]}): sessions start without it", file=sys.stderr)
