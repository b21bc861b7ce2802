"""Spark's Python worker daemon (``spark.python.daemon.module``) with the Delta I/O libraries already
imported when it forks a worker.

Every pairlake task reads or writes Delta through ``infra.spark_delta`` (pyarrow's datasets, which
import pandas, and delta-rs): about 2 CPU-s of imports in each new Python worker, and Spark retires
a worker after a minute idle, so short jobs pay it again and again. Imported once here, a forked
worker shares them. PySpark's own daemon imports nothing before forking because a library's
threads do not survive a fork; the threads these imports start are jemalloc's background thread
and OpenBLAS's pool, whose fork handlers make them fork-safe, and nothing runs in them before the
fork. torch and open_clip are not preloaded: only scoring tasks need them, and every Spark session
would pay their ~15 s.

Used in local mode, where the executors run this installation (``infra.spark``).
"""

import importlib

from pyspark import daemon

PRELOADED = ("pyarrow.dataset", "pandas", "deltalake", "pyspark.worker", "infra.spark_delta")

if __name__ == "__main__":
    for name in PRELOADED:
        importlib.import_module(name)
    daemon.manager()
