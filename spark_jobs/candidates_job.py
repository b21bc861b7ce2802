"""Candidate pairs on Spark: one task per WARC file, uid dedup within the run and across partitions.

Each task streams one file through ``WarcExtraction`` and emits its pairs plus, as side rows, its
rejects and counters; the driver writes pairs through the Delta data source (one commit replacing exactly the
run's partitions) and the small side tables through delta-rs. A file that cannot be read (missing,
retries exhausted, not a WARC) is a failed partition, not a failed job: the task emits one side row
saying why (after whatever the file gave before it failed, which is dropped), and that partition is
left as stored while the other files' pairs are committed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.config import ExtractConfig, StorageOptions
from infra.crawl_source import WarcFile
from infra.delta_store import Lake, Lineage
from infra.removal_fence import REMOVAL_SOURCE
from infra.spark import read_table, write_table
from infra.tables import CANDIDATES, WARC_REJECTS
from spark_jobs.blocklist import url_matches
from spark_jobs.warc_pairs import WarcExtraction

# Side rows travel in the same Arrow stream as the pairs: kind "pair", "reject", "counts" or "failed".
# Side rows leave the pair columns empty, so every column is nullable here.
_OUT_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in CANDIDATES.schema] + [pa.field("kind", pa.string()), pa.field("payload", pa.string())]
)


@dataclass
class CandidatesOutcome:
    version: int | None  # of candidates after the run; None if it has none (every file failed)
    counts: dict[str, dict[str, int]]  # committed partition -> counter -> value
    rejects: pa.Table
    failed: dict[str, str]  # partition whose file could not be read -> why, one line; left as stored


def _side_rows(warc_file: str, side: list[tuple[str, str]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            **{f.name: pa.nulls(len(side), f.type) for f in CANDIDATES.schema},
            "warc_file": [warc_file] * len(side),
            "kind": [k for k, _ in side],
            "payload": [p for _, p in side],
        },
        schema=_OUT_SCHEMA,
    )


def _extract_task(crawl_id: str, config: ExtractConfig, storage: StorageOptions | None):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in batch.to_pylist():
                extraction = WarcExtraction(row["uri"], row["warc_file"], crawl_id, config, storage)
                try:
                    for kind, found in extraction:
                        if kind == "pairs":
                            yield pa.RecordBatch.from_arrays(
                                [*found.columns, pa.array(["pair"] * found.num_rows, pa.string()),
                                 pa.nulls(found.num_rows, pa.string())], schema=_OUT_SCHEMA)
                        else:
                            yield _side_rows(row["warc_file"], [("reject", json.dumps(r, default=str))
                                                                for r in found.to_pylist()])
                except (OSError, ValueError) as exc:  # what WarcExtraction raises for an unreadable file
                    yield _side_rows(row["warc_file"], [("failed", " ".join(str(exc).split()))])
                    continue
                yield _side_rows(row["warc_file"], [("counts", json.dumps(extraction.counts))])

    return run


def build_candidates(
    spark: SparkSession,
    lake: Lake,
    warc_files: list[WarcFile],
    crawl_id: str,
    config: ExtractConfig,
    lineage: Lineage,
    storage: StorageOptions | None = None,
) -> CandidatesOutcome:
    """Candidates of ``warc_files`` (read with ``storage`` where they are at s3:// URLs), each file
    a partition; a file that cannot be read fails its partition only (``failed``)."""
    files = spark.sparkContext.parallelize([(f.warc_file, f.uri) for f in warc_files], max(1, len(warc_files)))
    extracted = (
        files.toDF("warc_file string, uri string")
        .mapInArrow(_extract_task(crawl_id, config, storage), from_arrow_schema(_OUT_SCHEMA))
        .persist()
    )
    try:
        side = extracted.where("kind != 'pair'").select("warc_file", "kind", "payload").collect()
        failed = {r["warc_file"]: r["payload"] for r in side if r["kind"] == "failed"}
        # Only the partitions of files read whole are replaced: replacing a failed file's partition
        # with nothing would delete the pairs an earlier run stored for it.
        names = [f.warc_file for f in warc_files if f.warc_file not in failed]
        pairs = extracted.where("kind = 'pair'")
        if failed:  # a failed file's pairs read before it failed must not take a uid from another file
            pairs = pairs.where(~F.col("warc_file").isin(list(failed)))
        pairs = pairs.select(*CANDIDATES.schema.names)
        # Within the run the earliest (file, offset) keeps a uid, whether it repeats on a later page
        # or in another file; a uid already stored by another partition stays there, so re-running
        # a partition never moves or duplicates a pair.
        first = Window.partitionBy("uid").orderBy("warc_file", "record_offset")
        unique = pairs.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n")
        elsewhere = read_table(spark, lake, CANDIDATES, columns=["uid", "warc_file"]).where(~F.col("warc_file").isin(names)).select("uid")
        # Pairs whose image URL an opt-out removed are never ingested again (counted per file).
        opted_out = url_matches(spark, lake, unique, source=REMOVAL_SOURCE).select("uid").distinct()
        kept = unique.join(elsewhere, "uid", "left_anti").join(opted_out, "uid", "left_anti").persist()
        try:
            per_file = {r["warc_file"]: r["count"] for r in pairs.groupBy("warc_file").count().collect()}
            kept_per_file = {r["warc_file"]: r["count"] for r in kept.groupBy("warc_file").count().collect()}
            opted_per_file = {
                r["warc_file"]: r["count"]
                for r in unique.join(opted_out, "uid", "left_semi").groupBy("warc_file").count().collect()
            }
            version = (
                write_table(kept, lake, CANDIDATES, lineage, replace_partitions=names) if names else lake.version(CANDIDATES)
            )
        finally:
            kept.unpersist()
    finally:
        extracted.unpersist()

    counts: dict[str, dict[str, int]] = {name: Counter() for name in names}
    rejects = []
    for row in side:
        if row["kind"] == "counts":
            counts[row["warc_file"]].update(json.loads(row["payload"]))
        elif row["kind"] == "reject" and row["warc_file"] not in failed:
            rejects.append(json.loads(row["payload"]))
    for name in names:
        counts[name]["removed_by_request"] = opted_per_file.get(name, 0)
        counts[name]["duplicate_uid_across_pages"] = (
            per_file.get(name, 0) - kept_per_file.get(name, 0) - opted_per_file.get(name, 0)
        )
        counts[name]["candidates"] = kept_per_file.get(name, 0)
    reject_table = pa.Table.from_pylist(rejects, schema=WARC_REJECTS.schema) if rejects else WARC_REJECTS.schema.empty_table()
    if names:
        lake.replace_partitions(WARC_REJECTS, reject_table, names, lineage)
    return CandidatesOutcome(version, {k: dict(v) for k, v in counts.items()}, reject_table, failed)
