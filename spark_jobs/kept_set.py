"""The kept set: pairs whose CLIP image–text cosine clears the model's threshold (LAION's filter),
joined in Spark per WARC partition: no process holds a run's pairs."""

from __future__ import annotations

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import CANDIDATES, CLIP_SCORES, IMAGES, KEPT_PAIRS

_IMAGE_COLUMNS = ["uid", "width", "height", "original_width", "original_height", "sha256", "sha1", "md5"]


def kept(similarity: Column, threshold: float) -> Column:
    """Whether a pair enters the kept set: similarity above the model's threshold, as LAION-5B
    (> 0.28), compared in float32 as similarities are stored (0.28 as a double is below float32
    0.28). Spark orders NaN above every number, so an unscored NaN is excluded explicitly."""
    return ~F.isnan(similarity) & (similarity > F.lit(threshold).cast("float"))


def write_kept(
    spark: SparkSession, lake: Lake, partitions: list[str], threshold: float, lineage: Lineage
) -> tuple[int, dict[str, int]]:
    """Replace ``partitions`` of kept_pairs with their candidates that downloaded ("ok") and clear
    ``threshold``; returns (version, kept pairs per partition)."""
    scores = read_table(spark, lake, CLIP_SCORES, partitions=partitions, columns=["uid", "similarity", "model_id"])
    images = read_table(spark, lake, IMAGES, partitions=partitions, columns=[*_IMAGE_COLUMNS, "status"],
                        where={"status": ["ok"]})
    candidates = read_table(spark, lake, CANDIDATES, partitions=partitions,
                            columns=["uid", "warc_file", "url", "caption", "language"])
    rows = (
        candidates.join(scores.where(kept(F.col("similarity"), threshold)), "uid")
        .join(images.select(*_IMAGE_COLUMNS), "uid")
        .select(*KEPT_PAIRS.schema.names)
    )
    version = write_table(rows, lake, KEPT_PAIRS, lineage, replace_partitions=partitions)
    counts = dict.fromkeys(partitions, 0)
    per_file = read_table(spark, lake, KEPT_PAIRS, version=version, partitions=partitions, columns=["warc_file"])
    for row in per_file.groupBy("warc_file").count().collect():
        counts[row["warc_file"]] = row["count"]
    return version, counts
