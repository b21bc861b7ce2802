"""img2dataset's ``download`` on Spark (``--distributor=pyspark``): the peer of pairlake's ``images``
stage, taking the flags img2dataset's command line takes (``bench_download.img2dataset_flags``).

Run by the img2dataset-pyspark peer virtualenv's Python (benchmarks/peers.py): img2dataset, pyspark
and the stdlib-only ``benchmarks.process_tree``.

    python img2dataset_spark.py --url_list=URLS.txt --distributor=pyspark --processes_count=2 ...
    # prints {"start_cpu_s": ..., "start_wall_s": ..., "download_cpu_s": ..., "download_wall_s": ...}

The Spark session is img2dataset's own (``distributor._spark_session``: local[processes_count], as
``download`` makes one when none is active), entered here rather than in ``download`` so that it is
still up when ``download`` returns: Spark's stop kills its Python workers unreaped, so their CPU
never reaches this process's rusage. The CPU is read from /proc instead: this process, every live
process under it (the JVM, its Python daemon and workers) and the children each one reaped (the
logger process, finished workers); at the session's start (imports and the JVM included: "start")
and when ``download`` returns.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import fire  # noqa: E402
from img2dataset import download  # noqa: E402
from img2dataset.distributor import _spark_session  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for benchmarks.process_tree
from benchmarks.process_tree import tree_cpu_seconds  # noqa: E402


def measured_download(**flags) -> None:
    # The workers run this Python, as they would from the activated virtualenv a user runs it in.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    with _spark_session(flags.get("processes_count", 1)):
        start_cpu, start_wall = tree_cpu_seconds(), time.perf_counter()
        download(**flags)
        download_cpu, download_wall = tree_cpu_seconds() - start_cpu, time.perf_counter() - start_wall
    print(json.dumps({"start_cpu_s": start_cpu, "start_wall_s": start_wall - STARTED,
                      "download_cpu_s": download_cpu, "download_wall_s": download_wall}), flush=True)


if __name__ == "__main__":
    fire.Fire(measured_download)  # img2dataset's own CLI is fire.Fire(download): the same flags, parsed alike
