"""Benchmark the Delta commit overhead per partition.

For a table that already holds ``--partitions`` partitions, times replacing one partition of
``--rows`` candidate-like rows (a) with ``Lake.replace_partitions`` (delta-rs writes and commits),
against writing the same rows to a plain Parquet file, and (b) through the Spark data source
(executors write Parquet, the driver commits once), against Spark writing plain Parquet. The
difference is what the Delta commit (log, lineage, partition replace) costs. Prints a table and
writes ``benchmarks/results/delta_commit.json``.

    .venv/bin/python -m benchmarks.bench_delta_commit [--partitions 50] [--rows 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from infra.config import SparkConfig
from infra.delta_store import Lake, Lineage
from infra.spark import spark_session, write_table
from infra.tables import CANDIDATES

RESULTS = Path(__file__).resolve().parent / "results" / "delta_commit.json"


def candidate_rows(partition: str, n: int) -> pa.Table:
    now = datetime.now(timezone.utc)
    return pa.Table.from_pylist(
        [
            {"uid": f"{partition}-{i:08d}", "url": f"http://img.example/{partition}/{i}.jpg",
             "caption": f"a red circle number {i}",
             "page_url": f"http://page.example/{i}", "crawl_id": "bench", "warc_file": partition,
             "record_offset": i * 1000, "fetch_date": now}
            for i in range(n)
        ],
        schema=CANDIDATES.schema,
    )


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=50)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pairlake-bench-delta-"))
    lake = Lake(str(work / "lake"))
    for p in range(args.partitions):
        name = f"part-{p:04d}"
        lake.replace_partitions(CANDIDATES, candidate_rows(name, args.rows), [name], Lineage(run_id="seed"))
    rows = candidate_rows("part-0000", args.rows)
    lineage = Lineage(run_id="bench", asset_key="candidates", partition_keys=("part-0000",), upstream={"warc_files": 3})

    delta_rs = timed(lambda: lake.replace_partitions(CANDIDATES, rows, ["part-0000"], lineage), args.repeat)
    parquet = timed(lambda: pq.write_table(rows, work / "plain.parquet"), args.repeat)

    with spark_session(SparkConfig(master="local[2]", app_name="bench-delta")) as spark:
        frame = spark.createDataFrame(rows.to_pandas()).repartition(2).cache()
        frame.count()
        spark_delta = timed(
            lambda: write_table(frame, lake, CANDIDATES, lineage, replace_partitions=["part-0000"]), args.repeat
        )
        spark_parquet = timed(lambda: frame.write.mode("overwrite").parquet(str(work / "plain-spark")), args.repeat)
    final_rows = lake.read(CANDIDATES).num_rows

    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "partitions_in_table": args.partitions,
        "rows_per_partition": args.rows,
        "table_versions": lake.version(CANDIDATES),
        "rows_after": final_rows,
        "delta_rs_replace_partition_s": delta_rs,
        "plain_parquet_write_s": parquet,
        "delta_rs_overhead_s": delta_rs - parquet,
        "spark_datasource_replace_partition_s": spark_delta,
        "spark_plain_parquet_write_s": spark_parquet,
        "spark_datasource_overhead_s": spark_delta - spark_parquet,
    }
    assert final_rows == args.partitions * args.rows, "a replace left duplicates or gaps"
    print(f"one partition of {args.rows:,} rows replaced in a table of {args.partitions} partitions "
          f"(median of {args.repeat}):")
    print(f"  {'path':<34} {'with Delta':>11} {'plain Parquet':>14} {'overhead':>9}")
    print(f"  {'delta-rs (Lake.replace_partitions)':<34} {delta_rs:>10.3f}s {parquet:>13.3f}s {delta_rs - parquet:>8.3f}s")
    print(f"  {'Spark data source':<34} {spark_delta:>10.3f}s {spark_parquet:>13.3f}s {spark_delta - spark_parquet:>8.3f}s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
