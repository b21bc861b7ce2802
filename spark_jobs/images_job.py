"""Image download on Spark: every candidate gets exactly one row in ``images``.

Candidates whose page opted out at parse time (``candidates.optout_signal``) get an
``opted_out:<signal>`` row and candidates whose URL digest is on an imported hash list a
``blocklisted`` row, both without any request; a downloaded image whose digest an opt-out removed
is recorded ``removed_by_request``, without its bytes. A re-run keeps earlier successes and
non-retryable failures as they are and fetches only the candidates that have no row yet or whose
last attempt failed in a retryable way; a parse-time signal that appeared or went away since (the
candidates were parsed again with other ``extract.honour_*`` switches) is applied again. Each Spark task
downloads its share with the async downloader (its own event loop, concurrency and host limits).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.config import DownloadConfig
from infra.delta_store import Lake, Lineage
from infra.removal_fence import REMOVAL_SOURCE
from infra.spark import read_table, write_table
from infra.tables import BLOCKLIST, CANDIDATES, IMAGES
from spark_jobs.blocklist import url_matches
from spark_jobs.download.downloader import download_batch
from spark_jobs.download.origin_policies import PolicyAnswers
from spark_jobs.html_images import META_ROBOTS, TDM_META

_SIGNAL_DETAILS = {
    META_ROBOTS: "the page's <meta name=robots> opts its images out of AI use",
    TDM_META: "the page's <meta name=tdm-reservation content=1> reserves TDM rights",
}
_SIGNAL_ERRORS = [f"opted_out:{signal}" for signal in _SIGNAL_DETAILS]


def _download_task(config: DownloadConfig, removed: dict[str, set[str]]):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # One downloader call per Arrow batch (up to spark.arrow_batch_rows rows): concurrency spans
        # the batch, and results are held for one batch only. The task holds all of its hosts'
        # URLs, one batch after another, so it asks each origin for its policy files once per run.
        answers: PolicyAnswers = {}
        for batch in batches:
            if batch.num_rows:
                rows = pa.Table.from_batches([batch]).select(["uid", "url", "warc_file"])
                images = download_batch(rows, config, policy_answers=answers)
                yield from _drop_removed(images, removed).cast(IMAGES.schema).to_batches()

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


def _url_authority(url: Column) -> Column:
    """The lower-cased ``host[:port]`` of a URL (with its user info, if any): the unit of politeness."""
    return F.lower(F.regexp_extract(url, r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)", 1))


def _unfetched(rows: DataFrame, error: Column, detail: Column) -> DataFrame:
    """IMAGES rows for candidates that are never requested: failed, not retryable, no attempt."""
    values = {
        "status": F.lit("failed"),
        "error": error,
        "error_detail": detail,
        "retryable": F.lit(False),
        "attempts": F.lit(0),
        "fetched_at": F.current_timestamp(),
    }
    return rows.select(
        [
            (values.get(f.name, F.col(f.name) if f.name in rows.columns else F.lit(None)))
            .cast(from_arrow_schema(pa.schema([f]))[0].dataType)
            .alias(f.name)
            for f in IMAGES.schema
        ]
    )


def _blocklisted(todo: DataFrame, matches: DataFrame) -> DataFrame:
    """Candidates whose URL digest is on a hash list."""
    sources = matches.groupBy("uid").agg(F.concat_ws(",", F.array_sort(F.collect_set("source"))).alias("sources"))
    return _unfetched(
        todo.join(sources, "uid"), F.lit("blocklisted"), F.concat(F.lit("URL digest on hash list: "), F.col("sources"))
    )


def _opted_out_at_parse(todo: DataFrame) -> DataFrame:
    """Candidates whose page opted its images out (read from the WARC, so known before any request)."""
    signal = F.col("optout_signal")
    detail = F.coalesce(*[F.when(signal == name, F.lit(text)) for name, text in _SIGNAL_DETAILS.items()])
    return _unfetched(todo.where(signal.isNotNull()), F.concat(F.lit("opted_out:"), signal), detail)


def download_images(
    spark: SparkSession,
    lake: Lake,
    partitions: list[str],
    config: DownloadConfig,
    lineage: Lineage,
) -> tuple[int, dict[str, dict[str, int]]]:
    """Download the candidates of ``partitions``; returns the images version and counts per partition."""
    candidates = read_table(
        spark, lake, CANDIDATES, partitions=partitions, columns=["uid", "url", "warc_file", "optout_signal"]
    )
    previous = read_table(spark, lake, IMAGES, partitions=partitions)
    # A candidate's parse-time signal is applied on every run, so settled rows are those of
    # candidates without one, and never a row that records a signal the candidate no longer has.
    settled = (
        previous.where("status = 'ok' OR NOT retryable")
        .where(F.col("error").isNull() | ~F.col("error").isin(*_SIGNAL_ERRORS))
        .join(candidates.where(F.col("optout_signal").isNull()).select("uid"), "uid", "left_semi")
    )
    # Every branch below reads the candidates still to do: computed once, not once per branch.
    todo = candidates.join(settled.select("uid"), "uid", "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
    opted_out = _opted_out_at_parse(todo)
    requestable = todo.where(F.col("optout_signal").isNull()).drop("optout_signal")
    blocked = _blocklisted(requestable, url_matches(spark, lake, requestable))
    tasks = config.tasks or spark.sparkContext.defaultParallelism
    # Politeness across the cluster: all of a host's URLs go to one task, whose downloader holds
    # at most download.per_host_concurrency requests to it at a time, so that is the run's limit.
    fetched = (
        requestable.join(blocked.select("uid"), "uid", "left_anti")
        .repartition(tasks, _url_authority(F.col("url")))
        .mapInArrow(_download_task(config, _removed_digests(lake)), from_arrow_schema(IMAGES.schema))
    )
    try:
        version = write_table(
            settled.unionByName(opted_out).unionByName(blocked).unionByName(fetched), lake, IMAGES, lineage,
            replace_partitions=partitions,
        )
    finally:
        todo.unpersist()

    # Counted in Spark: one row per (file, status, error), never one per image, reaches the driver.
    outcome = read_table(spark, lake, IMAGES, version=version, partitions=partitions, columns=["warc_file", "status", "error"])
    counts: dict[str, Counter[str]] = {p: Counter() for p in partitions}
    for row in outcome.groupBy("warc_file", "status", "error").count().collect():
        c = counts[row["warc_file"]]
        c["images_ok" if row["status"] == "ok" else "images_failed"] += row["count"]
        if row["error"]:
            c[f"failed_{row['error']}"] += row["count"]
    return version, {p: dict(c) for p, c in counts.items()}
