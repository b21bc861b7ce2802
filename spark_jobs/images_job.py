"""Image download on Spark: every candidate gets exactly one row in ``images``.

Candidates whose URL digest is on an imported hash list get a ``blocklisted`` row without any
request; a downloaded image whose digest an opt-out removed is recorded ``removed_by_request``,
without its bytes. A re-run keeps earlier successes and non-retryable failures as they are and fetches only the
candidates that have no row yet or whose last attempt failed in a retryable way. Each Spark task
downloads its share with the async downloader (its own event loop, concurrency and host limits).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.config import DownloadConfig
from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import BLOCKLIST, CANDIDATES, IMAGES
from spark_jobs.blocklist import REMOVAL_SOURCE, url_matches
from spark_jobs.download.downloader import download_batch


def _download_task(config: DownloadConfig, removed: dict[str, set[str]]):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # One downloader call per Arrow batch (up to spark.sql.execution.arrow.maxRecordsPerBatch
        # rows): concurrency spans the batch, and results are held for one batch only.
        for batch in batches:
            if batch.num_rows:
                rows = pa.Table.from_batches([batch]).select(["uid", "url", "warc_file"])
                yield from _drop_removed(download_batch(rows, config), removed).cast(IMAGES.schema).to_batches()

    return run


def _drop_removed(images: pa.Table, removed: dict[str, set[str]]) -> pa.Table:
    """Images whose bytes an opt-out removed before (same digest, new URL) are not kept: the row
    records ``removed_by_request`` without the bytes. Known only after the download, hence here."""
    if not images.num_rows or not any(removed.values()):
        return images
    hit = pa.array([False] * images.num_rows)
    for algorithm, digests in removed.items():
        hit = pc.or_(hit, pc.fill_null(pc.is_in(images[algorithm], pa.array(sorted(digests), pa.string())), False))
    if not pc.any(hit).as_py():
        return images
    cleared = {"image": None, "image_format": None, "width": None, "height": None}
    columns = {name: pc.if_else(hit, pa.scalar(cleared[name], images.schema.field(name).type), images[name])
               for name in cleared}
    columns["status"] = pc.if_else(hit, "failed", images["status"])
    columns["error"] = pc.if_else(hit, "removed_by_request", images["error"])
    columns["error_detail"] = pc.if_else(hit, "image digest on the opt-out removal list", images["error_detail"])
    columns["retryable"] = pc.if_else(hit, False, images["retryable"])
    for name, values in columns.items():
        images = images.set_column(images.schema.get_field_index(name), name, values)
    return images


def _removed_digests(lake: Lake) -> dict[str, set[str]]:
    """Image digests on the opt-out removal list, per algorithm (small: shipped to every task)."""
    rows = lake.read(BLOCKLIST, columns=["kind", "target", "digest"], partitions=[REMOVAL_SOURCE])
    digests: dict[str, set[str]] = {}
    for kind, target, digest in zip(rows["kind"].to_pylist(), rows["target"].to_pylist(), rows["digest"].to_pylist()):
        if target == "image":
            digests.setdefault(kind.removeprefix("image-"), set()).add(digest)
    return digests


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
        .mapInArrow(_download_task(config, _removed_digests(lake)), from_arrow_schema(IMAGES.schema))
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
