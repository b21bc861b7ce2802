"""The kept set: pairs whose CLIP image–text cosine clears the model's threshold (LAION's filter),
joined in Spark per WARC partition: no process holds a run's pairs.

Each kept pair's caption language is identified here, in the tasks that write it: curation reads it
(``curation.languages``), and the filter has already dropped most candidates (LAION-5B kept about
one in eight), so language ID runs on those only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import CANDIDATES, CLIP_SCORES, IMAGES, KEPT_PAIRS
from spark_jobs.caption_language import detect_languages

_IMAGE_COLUMNS = ["uid", "width", "height", "original_width", "original_height", "sha256", "sha1", "md5"]


def kept(similarity: Column, threshold: float) -> Column:
    """Whether a pair enters the kept set: similarity above the model's threshold, as LAION-5B
    (> 0.28), compared in float32 as similarities are stored (0.28 as a double is below float32
    0.28). Spark orders NaN above every number, so an unscored NaN is excluded explicitly."""
    return ~F.isnan(similarity) & (similarity > F.lit(threshold).cast("float"))


def with_languages(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """KEPT_PAIRS rows from rows without ``language``: each batch's distinct captions identified once."""
    for batch in batches:
        captions = batch.column("caption").to_pylist()
        found = detect_languages(captions)
        columns = {name: batch.column(name) for name in batch.schema.names}
        columns["language"] = pa.array([found.get(c, (None,))[0] for c in captions], pa.string())
        yield pa.RecordBatch.from_arrays([columns[f.name] for f in KEPT_PAIRS.schema], schema=KEPT_PAIRS.schema)


def write_kept(
    spark: SparkSession, lake: Lake, partitions: list[str], threshold: float, lineage: Lineage
) -> tuple[int, dict[str, int]]:
    """Replace ``partitions`` of kept_pairs with their candidates that downloaded ("ok") and clear
    ``threshold``; returns (version, kept pairs per partition)."""
    scores = read_table(spark, lake, CLIP_SCORES, partitions=partitions, columns=["uid", "similarity", "model_id"])
    images = read_table(spark, lake, IMAGES, partitions=partitions, columns=[*_IMAGE_COLUMNS, "status"],
                        where={"status": ["ok"]})
    candidates = read_table(spark, lake, CANDIDATES, partitions=partitions, columns=["uid", "warc_file", "url", "caption"])
    rows = (
        candidates.join(scores.where(kept(F.col("similarity"), threshold)), "uid")
        .join(images.select(*_IMAGE_COLUMNS), "uid")
        .select(*(name for name in KEPT_PAIRS.schema.names if name != "language"))
        .mapInArrow(with_languages, from_arrow_schema(KEPT_PAIRS.schema))
    )
    version = write_table(rows, lake, KEPT_PAIRS, lineage, replace_partitions=partitions)
    counts = dict.fromkeys(partitions, 0)
    per_file = read_table(spark, lake, KEPT_PAIRS, version=version, partitions=partitions, columns=["warc_file"])
    for row in per_file.groupBy("warc_file").count().collect():
        counts[row["warc_file"]] = row["count"]
    return version, counts
