"""Rows numbered 0..n-1 in uid order, without sorting everything on one partition.

Rows are counted per uid prefix (uids are hex digests: at most 4,096 prefixes, a small table on
the driver), so a row's number is its prefix's offset plus its rank within the prefix. Release
shards and kNN index ids are both numbered this way.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

PREFIX_CHARS = 3


def number_by_uid(spark: SparkSession, rows: DataFrame, column: str) -> tuple[DataFrame, int]:
    """``rows`` with a long column ``column`` numbering them in uid order from 0, and their count."""
    prefixed = rows.withColumn("_prefix", F.substring("uid", 1, PREFIX_CHARS))
    counts = sorted(prefixed.groupBy("_prefix").count().toArrow().to_pylist(), key=lambda row: row["_prefix"])
    offsets, total = [], 0
    for row in counts:
        offsets.append((row["_prefix"], total))
        total += row["count"]
    offset_rows = spark.createDataFrame(offsets or [("", 0)], "_prefix string, _offset long")
    rank = F.row_number().over(Window.partitionBy("_prefix").orderBy("uid"))
    numbered = (
        prefixed.join(F.broadcast(offset_rows), "_prefix")
        .withColumn(column, (F.col("_offset") + rank - 1).cast("long"))
        .drop("_prefix", "_offset")
    )
    return numbered, total
