"""Image download on Spark: every candidate gets exactly one row in ``images``.

Candidates whose URL digest is on an imported hash list get a ``blocklisted`` row without any
request. A re-run keeps earlier successes and non-retryable failures as they are and fetches only the
candidates that have no row yet or whose last attempt failed in a retryable way. Each Spark task
downloads its share with the async downloader (its own event loop, concurrency and host limits).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.config import DownloadConfig
from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import CANDIDATES, IMAGES
from spark_jobs.blocklist import url_matches
from spark_jobs.download.downloader import download_batch


def _download_task(config: DownloadConfig):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # One downloader call per Arrow batch (up to spark.sql.execution.arrow.maxRecordsPerBatch
        # rows): concurrency spans the batch, and results are held for one batch only.
        for batch in batches:
            if batch.num_rows:
                rows = pa.Table.from_batches([batch]).select(["uid", "url", "warc_file"])
                yield from download_batch(rows, config).cast(IMAGES.schema).to_batches()

    return run


def _blocklisted(todo: DataFrame, matches: DataFrame) -> DataFrame:
    """IMAGES rows, never fetched, for candidates whose URL digest is on a hash list."""
    sources = matches.groupBy("uid").agg(F.concat_ws(",", F.array_sort(F.collect_set("source"))).alias("sources"))
    values = {
        "status": F.lit("failed"),
        "error": F.lit("blocklisted"),
        "error_detail": F.concat(F.lit("URL digest on hash list: "), F.col("sources")),
        "retryable": F.lit(False),
        "attempts": F.lit(0),
        "fetched_at": F.current_timestamp(),
    }
    rows = todo.join(sources, "uid")
    return rows.select(
        [
            (values.get(f.name, F.col(f.name) if f.name in todo.columns else F.lit(None)))
            .cast(from_arrow_schema(pa.schema([f]))[0].dataType)
            .alias(f.name)
            for f in IMAGES.schema
        ]
    )


def download_images(
    spark: SparkSession,
    lake: Lake,
    partitions: list[str],
    config: DownloadConfig,
    lineage: Lineage,
) -> tuple[int, dict[str, dict[str, int]]]:
    """Download the candidates of ``partitions``; returns the images version and counts per partition."""
    candidates = read_table(spark, lake, CANDIDATES, partitions=partitions).select("uid", "url", "warc_file")
    previous = read_table(spark, lake, IMAGES, partitions=partitions)
    settled = previous.where("status = 'ok' OR NOT retryable").join(candidates.select("uid"), "uid", "left_semi")
    todo = candidates.join(settled.select("uid"), "uid", "left_anti")
    blocked = _blocklisted(todo, url_matches(spark, lake, todo))
    tasks = config.tasks or spark.sparkContext.defaultParallelism
    fetched = (
        todo.join(blocked.select("uid"), "uid", "left_anti")
        .repartition(tasks, "uid")
        .mapInArrow(_download_task(config), from_arrow_schema(IMAGES.schema))
    )
    version = write_table(
        settled.unionByName(blocked).unionByName(fetched), lake, IMAGES, lineage, replace_partitions=partitions
    )

    outcome = lake.read(IMAGES, version=version, columns=["warc_file", "status", "error"], partitions=partitions)
    counts: dict[str, Counter[str]] = {p: Counter() for p in partitions}
    for row in outcome.to_pylist():
        c = counts[row["warc_file"]]
        c["images_ok" if row["status"] == "ok" else "images_failed"] += 1
        if row["error"]:
            c[f"failed_{row['error']}"] += 1
    return version, {p: dict(c) for p, c in counts.items()}
