"""Curation over the whole lake: hash-list matches, dedup, and the curated set per safety variant.

Spark does the joins over every WARC partition. Near-duplicate search runs on the driver with faiss
(``gpu_jobs.near_duplicates``) over the exact-duplicate representatives' stored embeddings: one
float16 vector per image, so a driver holds tens of millions of them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from gpu_jobs.clip_scoring import embeddings_from_column
from gpu_jobs.near_duplicates import near_duplicate_clusters
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
    found = lake.read(BLOCKLIST_MATCHES, version=version, columns=["source", "kind"])
    per_list = Counter(f"{s}/{k}" for s, k in zip(found["source"].to_pylist(), found["kind"].to_pylist()))
    return version, dict(sorted(per_list.items()))


def _unblocked_kept(spark: SparkSession, lake: Lake) -> DataFrame:
    blocked = read_table(spark, lake, BLOCKLIST_MATCHES, columns=["uid"])
    return read_table(spark, lake, KEPT_PAIRS).join(blocked, "uid", "left_anti")


def deduplicate(
    spark: SparkSession, lake: Lake, config: CurationConfig, lineage: Lineage, progress: bool = False
) -> tuple[int, dict[str, int]]:
    """Rewrite ``dedup`` for the kept, unblocked pairs; returns (version, counts per reason).

    One representative per image sha256, then near-duplicate clusters over those representatives'
    CLIP image embeddings. Both prefer the highest CLIP similarity, then the earliest fetch, then
    the smallest uid, so the choice is deterministic.
    """
    fetched = read_table(spark, lake, CANDIDATES, columns=["uid", "fetch_date"])
    kept = _unblocked_kept(spark, lake).select("uid", "warc_file", "sha256", "similarity", "model_id").join(fetched, "uid")
    preference = [F.col("similarity").desc(), F.col("fetch_date").asc_nulls_last(), F.col("uid").asc()]
    # Both collections below read the ranking: computed once, not once per action.
    ranked = kept.withColumn(
        "exact_representative", F.first("uid").over(Window.partitionBy("sha256").orderBy(*preference))
    ).persist()
    try:
        members = ranked.select("uid", "warc_file", "sha256", "exact_representative").toArrow()
        reps = ranked.where("uid = exact_representative").join(
            read_table(spark, lake, CLIP_SCORES, columns=["uid", "model_id", "embedding_dim", "image_embedding"]),
            ["uid", "model_id"],
        )
        reps_table = reps.orderBy(*preference).select("uid", "embedding_dim", "image_embedding").toArrow()
    finally:
        ranked.unpersist()
    if members.num_rows == 0:
        return lake.overwrite(DEDUP, DEDUP.schema.empty_table(), lineage), {}
    dims = set(reps_table["embedding_dim"].to_pylist())
    if len(dims) != 1:
        raise ValueError(f"kept pairs carry embeddings of several widths {sorted(dims)}: one CLIP model at a time")
    embeddings = embeddings_from_column(reps_table["image_embedding"], dims.pop()).astype(np.float32)
    # Rows are in preference order, so "highest preference" is simply "earliest row".
    clusters = near_duplicate_clusters(
        embeddings,
        config.near_duplicate_threshold,
        preference=-np.arange(len(embeddings), dtype=np.float64),
        k=config.near_duplicate_neighbours,
        progress=progress,
    )
    rep_uids = np.array(reps_table["uid"].to_pylist(), dtype=object)
    by_rep = pa.table(
        {
            "exact_representative": rep_uids,
            "cluster": rep_uids[clusters.cluster],
            "cluster_size": clusters.cluster_size.astype(np.int64),
            "max_similarity": clusters.max_similarity.astype(np.float32),
        }
    )
    table = members.join(by_rep, "exact_representative")
    reason = pc.if_else(
        pc.not_equal(table["uid"], table["exact_representative"]),
        "exact_duplicate",
        pc.if_else(pc.not_equal(table["uid"], table["cluster"]), "near_duplicate", "kept"),
    )
    table = table.append_column("reason", reason).select(DEDUP.schema.names).cast(DEDUP.schema).sort_by("uid")
    version = lake.overwrite(DEDUP, table, lineage)
    return version, dict(sorted(Counter(table["reason"].to_pylist()).items()))


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
        stale = set(lake.read(CURATED, columns=["variant"])["variant"].to_pylist()) if lake.version(CURATED) is not None else set()
        version = write_table(
            curated.select(*CURATED.schema.names), lake, CURATED, lineage,
            replace_partitions=sorted(set(config.variants) | stale),
        )
    finally:
        joined.unpersist()
    counts = Counter(lake.read(CURATED, version=version, columns=["variant"])["variant"].to_pylist())
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
