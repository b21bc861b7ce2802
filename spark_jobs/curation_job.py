"""Curation over the whole lake: hash-list matches, dedup, and the curated set per safety variant.

Spark does the joins over every WARC partition, and the near-duplicate search over the
exact-duplicate representatives' stored embeddings runs as Spark tasks too
(``spark_jobs.near_duplicates_job``): no process holds a table's embeddings (the driver holds
at most the exact-search size, 20,000 of them).
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from infra.config import CurationConfig
from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import (
    BLOCKLIST,
    BLOCKLIST_MATCHES,
    CANDIDATES,
    CLIP_SCORES,
    CURATED,
    DEDUP,
    IMAGE_TAGS,
    IMAGES,
    KEPT_PAIRS,
)
from spark_jobs.blocklist import image_matches, url_matches
from spark_jobs.near_duplicates_job import near_duplicate_clusters


def match_blocklists(spark: SparkSession, lake: Lake, lineage: Lineage) -> tuple[int, dict[str, int]]:
    """Rewrite ``blocklist_matches`` from every list against every pair; returns (version, matches
    per "source/kind"). Uses stored digests only: no URL is fetched."""
    # URL digests, URL rules and the final join all read the pairs: read once, not once per branch.
    pairs = read_table(spark, lake, CANDIDATES, columns=["uid", "url", "warc_file"]).persist(StorageLevel.MEMORY_AND_DISK)
    images = read_table(spark, lake, IMAGES, columns=["uid", "status", "md5", "sha1", "sha256"])
    matches = (
        url_matches(spark, lake, pairs)
        .unionByName(image_matches(spark, lake, images))
        .distinct()
        .join(pairs.select("uid", "warc_file"), "uid")
        .select(*BLOCKLIST_MATCHES.schema.names)
    )
    try:
        version = write_table(matches, lake, BLOCKLIST_MATCHES, lineage)
    finally:
        pairs.unpersist()
    found = read_table(spark, lake, BLOCKLIST_MATCHES, version=version, columns=["source", "kind"])
    per_list = {f"{row['source']}/{row['kind']}": row["count"] for row in found.groupBy("source", "kind").count().collect()}
    return version, dict(sorted(per_list.items()))


def _unblocked_kept(spark: SparkSession, lake: Lake) -> DataFrame:
    blocked = read_table(spark, lake, BLOCKLIST_MATCHES, columns=["uid"])
    return read_table(spark, lake, KEPT_PAIRS).join(blocked, "uid", "left_anti")


def deduplicate(
    spark: SparkSession, lake: Lake, config: CurationConfig, lineage: Lineage, progress: bool = False
) -> tuple[int, dict[str, int]]:
    """Rewrite ``dedup`` for the kept, unblocked pairs; returns (version, counts per reason).

    One representative per image sha256, then near-duplicate clusters over those representatives'
    CLIP image embeddings (``near_duplicates_job``). Both prefer the highest CLIP similarity, then
    the earliest fetch, then the smallest uid, so the choice is deterministic.
    """
    fetched = read_table(spark, lake, CANDIDATES, columns=["uid", "fetch_date"])
    kept = _unblocked_kept(spark, lake).select("uid", "warc_file", "sha256", "similarity", "model_id").join(fetched, "uid")
    preference = [F.col("similarity").desc(), F.col("fetch_date").asc_nulls_last(), F.col("uid").asc()]
    # The same order as one comparable key: the smallest key is the most preferred row.
    key = F.struct((-F.col("similarity")).alias("similarity"), F.col("fetch_date").isNull().alias("undated"),
                   F.col("fetch_date").alias("fetch_date"), F.col("uid").alias("uid"))
    ranked = kept.withColumn(
        "exact_representative", F.first("uid").over(Window.partitionBy("sha256").orderBy(*preference))
    ).persist(StorageLevel.MEMORY_AND_DISK)
    reps = (
        ranked.where("uid = exact_representative")
        .join(read_table(spark, lake, CLIP_SCORES, columns=["uid", "model_id", "embedding_dim", "image_embedding"]),
              ["uid", "model_id"])
        .select("uid", "embedding_dim", "image_embedding", key.alias("key"))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        widths = {row["embedding_dim"]: row["count"] for row in reps.groupBy("embedding_dim").count().collect()}
        if len(widths) > 1:
            raise ValueError(f"kept pairs carry embeddings of several widths {sorted(widths)}: one CLIP model at a time")
        clusters = near_duplicate_clusters(
            spark, reps, sum(widths.values()), F.col("key"), next(iter(widths), 1),
            config.near_duplicate_threshold, config.near_duplicate_neighbours, config.near_duplicate_probes,
            config.near_duplicate_max_cells, progress,
        ).withColumnRenamed("uid", "exact_representative")
        table = ranked.select("uid", "warc_file", "sha256", "exact_representative").join(clusters, "exact_representative")
        reason = (
            F.when(F.col("uid") != F.col("exact_representative"), "exact_duplicate")
            .when(F.col("uid") != F.col("cluster"), "near_duplicate")
            .otherwise("kept")
        )
        version = write_table(table.withColumn("reason", reason).select(*DEDUP.schema.names), lake, DEDUP, lineage)
    finally:
        reps.unpersist()
        ranked.unpersist()
    reasons = read_table(spark, lake, DEDUP, version=version, columns=["reason"]).groupBy("reason").count().collect()
    return version, {row["reason"]: row["count"] for row in sorted(reasons)}


def curate(
    spark: SparkSession, lake: Lake, config: CurationConfig, model_id: str, lineage: Lineage
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Rewrite ``curated``: the kept, unblocked, deduplicated pairs in the configured languages,
    tagged, per safety variant (``punsafe`` at most the variant's limit). Returns (version, rows
    per variant, pairs dropped per rule)."""
    kept = _unblocked_kept(spark, lake).where(F.col("model_id") == model_id)
    dedup = read_table(spark, lake, DEDUP, columns=["uid", "cluster_size"], where={"reason": ["kept"]})
    tags = read_table(
        spark, lake, IMAGE_TAGS, columns=["uid", "punsafe", "pwatermark", "aesthetic"], where={"model_id": [model_id]}
    )
    # The counts and every variant read the same join: computed once, not once per action.
    joined = kept.join(dedup, "uid").join(tags, "uid", "left").persist()
    try:
        dropped: dict[str, int] = {"untagged": joined.where("punsafe IS NULL").count()}
        pool = joined.where("punsafe IS NOT NULL")
        if config.languages:
            in_language = F.col("language").isin(list(config.languages))
            dropped["language"] = pool.where(~in_language | F.col("language").isNull()).count()
            pool = pool.where(in_language)
        variants = [
            pool.where(F.col("punsafe") <= F.lit(limit)).withColumn("variant", F.lit(name))
            for name, limit in sorted(config.variants.items())
        ]
        curated = variants[0]
        for more in variants[1:]:
            curated = curated.unionByName(more)
        table = lake.table(CURATED)
        stale = {values["variant"] for values in table.partitions()} if table is not None else set()  # log metadata only
        version = write_table(
            curated.select(*CURATED.schema.names), lake, CURATED, lineage,
            replace_partitions=sorted(set(config.variants) | stale),
        )
    finally:
        joined.unpersist()
    per_variant = read_table(spark, lake, CURATED, version=version, columns=["variant"]).groupBy("variant").count()
    counts = {row["variant"]: row["count"] for row in per_variant.collect()}
    return version, {v: counts.get(v, 0) for v in sorted(config.variants)}, dropped



# -- the curated asset's checks, as Spark queries over the whole table ----------------------------

def curated_on_hash_lists(spark: SparkSession, lake: Lake, shown: int = 20) -> tuple[int, list[str]]:
    """Curated pairs whose URL or image digest is on a list (or whose URL an opt-out rule covers):
    how many, and the first ``shown`` uids."""
    if lake.version(BLOCKLIST) is None:
        return 0, []
    curated = read_table(spark, lake, CURATED, columns=["uid", "url", "md5", "sha1", "sha256"])
    hits = (
        url_matches(spark, lake, curated.select("uid", "url")).select("uid")
        .unionByName(image_matches(spark, lake, curated.withColumn("status", F.lit("ok"))).select("uid"))
        .distinct()
        .persist()
    )
    try:
        return hits.count(), [row["uid"] for row in hits.orderBy("uid").limit(shown).collect()]
    finally:
        hits.unpersist()


def repeated_curated_uids(spark: SparkSession, lake: Lake) -> int:
    """(variant, uid) pairs that occur more than once in curated."""
    counts = read_table(spark, lake, CURATED, columns=["variant", "uid"]).groupBy("variant", "uid").count()
    return counts.where("count > 1").count()


def curated_without_embedding(spark: SparkSession, lake: Lake) -> int:
    """Curated pairs with no stored CLIP embedding of their scoring model."""
    scored = read_table(spark, lake, CLIP_SCORES, columns=["uid", "model_id", "embedding_dim"]).where("embedding_dim > 0")
    curated = read_table(spark, lake, CURATED, columns=["uid", "model_id"])
    return curated.join(scored.select("uid", "model_id"), ["uid", "model_id"], "left_anti").count()
