"""The Spark driver JVM maps the project's class-data-sharing archive (infra/spark_cds.py), built
once by `make setup`, and says nothing about it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from infra import spark_cds

ROOT = Path(__file__).resolve().parents[2]

# A fresh process: the session's JVM is started with the options of build_spark_session.
CHILD = textwrap.dedent(
    """
    from infra import spark_cds
    from infra.config import SparkConfig
    from infra.spark import build_spark_session

    spark = build_spark_session(SparkConfig(app_name="archive-check"))
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/maps") as maps:
        print(str(spark_cds.archive_path()) in maps.read())
    spark.stop()
    """
)


def test_a_session_maps_the_class_archive_quietly():
    archive = spark_cds.build()
    assert archive.is_file() and archive.stat().st_size > 10 << 20
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "True", done.stdout + done.stderr[-3000:]
    assert "[cds" not in done.stderr


def test_no_archive_no_option(monkeypatch, tmp_path):
    monkeypatch.setattr(spark_cds, "ARCHIVE_DIR", tmp_path)
    assert spark_cds.java_options() == ""
