"""Tagging as Spark tasks: every ``clip_scores`` row of the run's model gets an ``image_tags`` row.

The scorers (heads, or zero-shot prompts fitted with the text tower) are loaded once on the
driver and shipped to the tasks with the job: they are small, and executors then need neither the
head files nor the CLIP model. Each task tags the embeddings of one data file as they stream in.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import CLIP_SCORES, IMAGE_TAGS


def _tagging_task(scorers: dict, identities: dict[str, str]):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from gpu_jobs.tagging import tag_embeddings

        for batch in batches:
            if batch.num_rows:
                yield from tag_embeddings(pa.Table.from_batches([batch]), scorers, identities).to_batches()

    return run


def tag_partitions(
    spark: SparkSession, lake: Lake, partitions: list[str], model_id: str, scorers: dict, identities: dict[str, str],
    lineage: Lineage,
) -> tuple[int, int, dict[str, float]]:
    """Tag ``partitions``; returns (image_tags version, rows tagged, mean of each standard tag)."""
    from gpu_jobs.tagging import STANDARD_TAGS

    scores = read_table(
        spark, lake, CLIP_SCORES, partitions=partitions,
        columns=["uid", "warc_file", "model_id", "embedding_dim", "image_embedding"], where={"model_id": [model_id]},
    )
    tags = scores.mapInArrow(_tagging_task(scorers, identities), from_arrow_schema(IMAGE_TAGS.schema))
    version = write_table(tags, lake, IMAGE_TAGS, lineage, replace_partitions=partitions)
    summary = (
        read_table(spark, lake, IMAGE_TAGS, version=version, partitions=partitions, columns=list(STANDARD_TAGS))
        .agg(F.count("*").alias("rows"), *[F.avg(tag).alias(tag) for tag in STANDARD_TAGS])
        .collect()[0]
    )
    means = {tag: round(float(summary[tag]), 4) for tag in STANDARD_TAGS if summary[tag] is not None}
    return version, int(summary["rows"]), means
