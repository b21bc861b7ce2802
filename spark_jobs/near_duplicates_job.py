"""Near-duplicate clusters as Spark tasks, with no table's embeddings in one process.

The search is ``gpu_jobs.near_duplicates``'s cell method spread over executors: k-means centroids
are trained on the driver from a seeded sample of at most ``TRAIN_POINTS_PER_CELL`` x cells rows;
every row is assigned to its ``nprobe`` nearest cells in a task; rows are shuffled by cell, and one
task searches a cell at a time (the rows stored in it x the rows probing it) with the same
``cell_pairs`` as one process does. Each row keeps its ``k`` best links (a window per row).

Clusters are the connected components of the links, found by min-label propagation with pointer
jumping over DataFrames: a row's label is the smallest preference key in its component (the most
preferred row), so the representative needs no second pass. Only rows with links take part.

Up to ``EXACT_MAX_ROWS`` rows the search is exact: one cell, searched by one task whatever the
cluster. Those rows are clustered in the driver by ``gpu_jobs.near_duplicates`` itself (at most
40 MB of float32), which gives the same clusters without the label propagation's dozens of small
Spark jobs (~15 s for a few hundred rows on local[2]).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs import near_duplicates
from gpu_jobs.near_duplicates import (
    EXACT_MAX_ROWS, TRAIN_POINTS_PER_CELL, cell_count, cell_pairs, probe_cells, train_centroids,
)
from infra.arrow_runs import key_runs

log = logging.getLogger(__name__)

_CELLS_SCHEMA = "cell long, stored boolean, uid string, image_embedding binary"
_LINKS_SCHEMA = "src string, dst string, similarity float"
_CLUSTERS_SCHEMA = "uid string, cluster string, cluster_size long, max_similarity float"
_HASH_RANGE = 1 << 31


def _assign_task(centroids: object, dim: int, nprobe: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Each row once per cell it probes; ``stored`` marks its own (nearest) cell."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if centroids is None:
                probes = np.zeros((batch.num_rows, 1), dtype=np.int64)
            else:
                probes = probe_cells(embeddings_from_column(batch.column("image_embedding"), dim),
                                     centroids.value, nprobe)  # type: ignore[attr-defined]
            repeat = np.repeat(np.arange(batch.num_rows), probes.shape[1])
            yield pa.RecordBatch.from_arrays(
                [pa.array(probes.ravel()), pa.array(np.tile(np.arange(probes.shape[1]) == 0, batch.num_rows)),
                 batch.column("uid").take(repeat), batch.column("image_embedding").take(repeat)],
                names=["cell", "stored", "uid", "image_embedding"],
            )

    return run


def _search_task(dim: int, threshold: float, k: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Rows arrive grouped by cell; each cell is searched once all its rows are in."""

    def search(cell: pa.Table) -> pa.RecordBatch:
        uids = cell.column("uid").to_numpy(zero_copy_only=False).astype(str)
        vectors = embeddings_from_column(cell.column("image_embedding"), dim)
        stored = cell.column("stored").to_numpy(zero_copy_only=False)
        members = np.flatnonzero(stored)
        members = members[np.argsort(uids[members], kind="stable")]
        src, dst, sim = cell_pairs(uids[members], vectors[members], uids, vectors, threshold, k)
        return pa.RecordBatch.from_arrays([pa.array(src, pa.string()), pa.array(dst, pa.string()),
                                           pa.array(sim, pa.float32())], names=["src", "dst", "similarity"])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pending: list[pa.RecordBatch] = []
        current = None
        for cell, rows in key_runs(batches, "cell"):
            if pending and cell != current:
                yield search(pa.Table.from_batches(pending))
                pending = []
            current = cell
            pending.append(rows)
        if pending:
            yield search(pa.Table.from_batches(pending))

    return run


def _links(spark: SparkSession, reps: DataFrame, rows: int, dim: int, threshold: float, k: int, nprobe: int,
           max_cells: int, progress: bool) -> DataFrame:
    """(src, dst, similarity): each row's best <= k neighbours at or above ``threshold``."""
    cells = min(cell_count(rows), max_cells)
    centroids = None
    if cells > 1:
        fraction = min(1.0, TRAIN_POINTS_PER_CELL * cells / rows)
        sampled = reps.where(F.pmod(F.xxhash64("uid"), F.lit(_HASH_RANGE)) < int(fraction * _HASH_RANGE))
        sample = embeddings_from_column(sampled.select("image_embedding").toArrow()["image_embedding"], dim)
        cells = min(cells, len(sample))
        centroids = spark.sparkContext.broadcast(train_centroids(sample, cells, progress))
        log.info("near-duplicates: %d rows in %d cells (centroids from %d sampled rows), %d probed per row",
                 rows, cells, len(sample), nprobe)
    by_cell = (
        reps.select("uid", "image_embedding")
        .mapInArrow(_assign_task(centroids, dim, nprobe), _CELLS_SCHEMA)
        .repartition("cell")
        .sortWithinPartitions("cell", "uid")
    )
    found = by_cell.mapInArrow(_search_task(dim, threshold, k), _LINKS_SCHEMA)
    best = F.row_number().over(Window.partitionBy("src").orderBy(F.col("similarity").desc(), F.col("dst")))
    return found.withColumn("_rank", best).where(F.col("_rank") <= k).drop("_rank")


def _components(links: DataFrame, keys: DataFrame) -> DataFrame:
    """(uid, label): every linked row's label is the smallest ``key`` in its (weakly) connected
    component. Min-label propagation: each round a row takes the smallest label among itself and
    its neighbours, then the label of its label's row (pointer jumping), until nothing changes."""
    edges = (
        links.select("src", "dst").unionByName(links.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
        .distinct()
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        labels = (
            edges.select(F.col("src").alias("uid")).distinct().join(keys, "uid")
            .select("uid", F.col("key").alias("label"))
        )
        rounds = 0
        while True:
            rounds += 1
            neighbours = (
                edges.join(labels.withColumnRenamed("uid", "dst"), "dst")
                .groupBy(F.col("src").alias("uid")).agg(F.min("label").alias("neighbour"))
            )
            spread = labels.join(neighbours, "uid").select(
                "uid", F.col("label").alias("before"), F.least("label", "neighbour").alias("label"))
            via = spread.select(F.col("uid").alias("via"), F.col("label").alias("via_label"))
            # Checkpointed each round, so a round plans from data, not from every earlier round.
            jumped = (
                spread.join(via, F.col("label.uid") == F.col("via"))
                .select("uid", "before", F.least("label", "via_label").alias("label"))
                .localCheckpoint(eager=False)
            )
            changed = jumped.where(F.col("label") != F.col("before")).count()
            labels = jumped.select("uid", "label")
            log.info("near-duplicates: components round %d, %d labels changed", rounds, changed)
            if changed == 0:
                return labels
    finally:
        edges.unpersist()


def near_duplicate_clusters(
    spark: SparkSession,
    reps: DataFrame,
    rows: int,
    key: Column,
    dim: int,
    threshold: float,
    k: int,
    nprobe: int,
    max_cells: int,
    progress: bool = False,
    driver_max_rows: int = EXACT_MAX_ROWS,
) -> DataFrame:
    """(uid, cluster, cluster_size, max_similarity) for every row of ``reps`` (``rows`` of them;
    columns ``uid``, ``image_embedding``: float16 L2-normalised, ``dim`` wide), with the semantics of
    ``gpu_jobs.near_duplicates.near_duplicate_clusters``: clusters are the connected components of
    each row's ``k`` nearest neighbours at cosine >= ``threshold``, represented by the row with the
    smallest ``key`` (a struct with a ``uid`` field last, so ties cannot happen). ``max_similarity`` is the
    best cosine of a row's links, null for a row with none. ``reps`` is read several times: pass a
    persisted DataFrame. Up to ``driver_max_rows`` rows (never above ``EXACT_MAX_ROWS``) are
    clustered in the driver (module docstring)."""
    if rows <= min(driver_max_rows, EXACT_MAX_ROWS):
        return _clusters_in_driver(spark, reps, key, dim, threshold, k, progress)
    links = _links(spark, reps, rows, dim, threshold, k, nprobe, max_cells, progress).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        labels = _components(links, reps.select("uid", key.alias("key")))
        best = (
            links.select(F.col("src").alias("uid"), "similarity")
            .unionByName(links.select(F.col("dst").alias("uid"), "similarity"))
            .groupBy("uid").agg(F.max("similarity").alias("max_similarity"))
        )
        sizes = labels.groupBy("label").agg(F.count("*").alias("cluster_size"))
        clustered = labels.join(sizes, "label").join(best, "uid").select(
            "uid", F.col("label.uid").alias("cluster"), "cluster_size", "max_similarity")
        return (
            reps.select("uid").join(clustered, "uid", "left")
            .select("uid", F.coalesce("cluster", "uid").alias("cluster"),
                    F.coalesce("cluster_size", F.lit(1).cast("long")).alias("cluster_size"), "max_similarity")
            .localCheckpoint()
        )
    finally:
        links.unpersist()


def _clusters_in_driver(spark: SparkSession, reps: DataFrame, key: Column, dim: int, threshold: float, k: int,
                        progress: bool) -> DataFrame:
    """``near_duplicate_clusters`` for an exact-search-sized ``reps``, by the one-process search.

    Rows are put in uid order, as the Spark search orders a cell's members, so that equal cosines
    at a row's k-th link break the same way; the preference is the rank of ``key``.
    """
    by_key = reps.orderBy(key).select("uid", "image_embedding").toArrow()
    uids = by_key.column("uid").to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(uids, kind="stable")
    found = near_duplicates.near_duplicate_clusters(
        embeddings_from_column(by_key.column("image_embedding"), dim)[order], threshold,
        preference=-order.astype(np.float64), k=k, progress=progress)
    uids = uids[order]
    result = pa.table({
        "uid": pa.array(uids, pa.string()),
        "cluster": pa.array(uids[found.cluster], pa.string()),
        "cluster_size": pa.array(found.cluster_size, pa.int64()),
        "max_similarity": pa.array(found.max_similarity, pa.float32(), mask=np.isnan(found.max_similarity)),
    })
    return spark.createDataFrame(result, _CLUSTERS_SCHEMA)
