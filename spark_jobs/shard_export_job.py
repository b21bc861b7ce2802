"""Release shards as Spark tasks: samples numbered in uid order, image bytes joined by uid, and one
task writing each shard whole (img2dataset's unit of parallel work).

Samples are numbered in uid order (``uid_order``) and a sample's shard is its number //
samples_per_shard. Rows are hash-partitioned by shard, sorted by uid within it,
and written by the same writer as a single-process export (``shard_export.write_numbered_shards``):
the same tars byte for byte, whatever the cluster.

Tasks write shard files straight into the lake (a shared folder or the bucket), each published
whole; a task gets the Lake and the folder's layout key, and opens the filesystem itself.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.delta_store import Lake
from infra.spark import collect, read_table
from infra.tables import CURATED, IMAGES
from spark_jobs import shard_export
from spark_jobs.shard_export import ShardInfo
from spark_jobs.uid_order import number_by_uid

_INFO_SCHEMA = pa.schema([("shard", pa.string()), ("path", pa.string()), ("samples", pa.int64()),
                          ("bytes", pa.int64()), ("sha256", pa.string())])


def sample_schema() -> pa.Schema:
    """A released sample: the curated row (less its variant) and the image bytes."""
    fields = [field for field in CURATED.schema if field.name != "variant"]
    return pa.schema([*fields, IMAGES.schema.field("image"), pa.field("shard", pa.int64(), nullable=False)])


def number_samples(spark: SparkSession, samples: DataFrame, samples_per_shard: int) -> tuple[DataFrame, int]:
    """``samples`` with column ``shard`` (consecutive samples in uid order fill consecutive shards),
    and how many samples there are."""
    numbered, total = number_by_uid(spark, samples, "_index")
    shard = F.floor(F.col("_index") / F.lit(samples_per_shard)).cast("long")
    return numbered.withColumn("shard", shard).drop("_index"), total


def export_variant_shards(
    spark: SparkSession,
    lake: Lake,
    variant: str,
    out: str,
    samples_per_shard: int,
    image_ext: str = "jpg",
    curated_version: int | None = None,
    images_version: int | None = None,
) -> list[ShardInfo]:
    """Write the curated ``variant`` (at ``curated_version``) as shards into the lake folder ``out`` (a
    layout key; holding no shards), with
    the image bytes of ``images`` (at ``images_version``); one ShardInfo per tar, in shard order."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    schema = sample_schema()
    curated = read_table(spark, lake, CURATED, version=curated_version, where={"variant": [variant]}).drop("variant")
    numbered, total = number_samples(spark, curated, samples_per_shard)
    if total == 0:
        return []
    images = read_table(spark, lake, IMAGES, version=images_version, columns=["uid", "image"], where={"status": ["ok"]})
    shards = -(-total // samples_per_shard)
    # A left join: a curated sample without image bytes is an error the writer names, not a gap.
    samples = (
        numbered.join(images, "uid", "left")
        .select(*schema.names)
        .repartition(shards, "shard")
        .sortWithinPartitions("shard", "uid")
    )
    shard_export.prepare_out_dir(lake.folder(out))

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        conformed = (batch.cast(schema) for batch in batches)
        for info in shard_export.write_numbered_shards(conformed, lake.folder(out), samples_per_shard, image_ext):
            yield pa.RecordBatch.from_pylist([dataclasses.asdict(info)], schema=_INFO_SCHEMA)

    written = collect(samples.mapInArrow(write, from_arrow_schema(_INFO_SCHEMA)))
    return sorted((ShardInfo(**row) for row in written.to_pylist()), key=lambda info: info.shard)


def rewrite_shards(spark: SparkSession, lake: Lake, drop: DataFrame, source: str, out: str) -> list[ShardInfo]:
    """Rewrite each shard of the lake folder ``source`` that holds a sample of ``drop`` (columns
    shard, key) into the folder ``out`` (layout keys) without those samples, one Spark task per
    shard; the rewritten shards' ShardInfos."""
    per_shard = drop.groupBy("shard").agg(F.collect_list("key").alias("keys"))
    shards = per_shard.count()
    if not shards:
        return []

    def rewrite(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in batch.to_pylist():
                info = shard_export.rewrite_shard(lake.folder(source), row["shard"], set(row["keys"]), lake.folder(out))
                yield pa.RecordBatch.from_pylist([dataclasses.asdict(info)], schema=_INFO_SCHEMA)

    written = collect(per_shard.repartition(shards, "shard").mapInArrow(rewrite, from_arrow_schema(_INFO_SCHEMA)))
    return sorted((ShardInfo(**row) for row in written.to_pylist()), key=lambda info: info.shard)
