"""The kNN index of a curated variant, built as Spark tasks with no process holding the variant:
one faiss index over the pairs' image embeddings and, with ``index.text_index``, one over their
caption embeddings under the same ids, built side by side the same way.

As autofaiss does it: the driver plans the index (``gpu_jobs.knn_index.plan_index``), collects a
seeded sample of rows and trains the quantizer on it. Rows are numbered in uid order (the faiss
id), cut into shards of ``index.rows_per_shard`` consecutive ids, and one task adds each shard to
a copy of the trained index and writes it to a staging folder, together with its rows' metadata and
the exact top neighbours of the recall queries among its rows. The driver merges the shards in
order, in memory or, when the plan keeps the lists on disk, into one ``.ivfdata`` file; tunes
nprobe against the merged exact tops; and publishes the rows' metadata, the index and a manifest
that lists every shard. The result equals ``knn_index.build_index`` over the same rows.

Shards are staged in the lake itself (a shared folder or the bucket), published by the tasks
through ``Folder.publish``; the driver merges them from local files (faiss reads only those): in
place on a local lake, from one temporary download of the staging folder on an object store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterator

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from gpu_jobs import knn_index as knn
from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs.knn_index import METADATA_SCHEMA, index_folder
from infra import lake_layout
from infra.arrow_runs import key_runs
from infra.config import IndexConfig
from infra.delta_store import Lake, Lineage
from infra.spark import collect, read_table
from infra.tables import CLIP_SCORES, CURATED, IMAGE_TAGS
from spark_jobs.uid_order import number_by_uid

log = logging.getLogger(__name__)

RECALL_K = 10
SEED = 0


def _shard_schema(modalities: list[str]) -> pa.Schema:
    fields = [("shard", pa.int64()), ("rows", pa.int64())]
    for modality in modalities:
        fields += [(f"{modality}_index_bytes", pa.int64()), (f"{modality}_top_scores", pa.binary()),
                   (f"{modality}_top_ids", pa.binary())]
    return pa.schema(fields)


def _shard_file(shard: int, suffix: str) -> str:
    return f"shard-{shard:05d}{suffix}"


def _shard_task(trained: dict[str, object], queries: dict[str, object], dim: int, top_k: int, lake: Lake,
                staging_key: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Add each shard's rows (sorted by id) to a copy of each modality's trained index; write them
    and the rows' metadata into the staging folder (opened in the task: a Folder in a bucket is
    never pickled)."""
    modalities = list(trained)
    schema = _shard_schema(modalities)

    def finish(shard: int, indexes: dict[str, faiss.Index], tops: dict[str, knn.ExactTop],
               metadata: list[pa.RecordBatch]) -> pa.RecordBatch:
        staging = lake.folder(staging_key)
        row = {"shard": shard, "rows": int(indexes[modalities[0]].ntotal)}
        for modality in modalities:
            # Published whole: a retried or speculative task never leaves half a shard.
            with staging.publish(_shard_file(shard, f".{modality}.faiss")) as handle:
                faiss.write_index(indexes[modality], faiss.PyCallbackIOWriter(handle.write))
                row[f"{modality}_index_bytes"] = handle.tell()
            scores, ids = tops[modality].result()
            row[f"{modality}_top_scores"] = scores.astype(np.float32).tobytes()
            row[f"{modality}_top_ids"] = ids.astype(np.int64).tobytes()
        with staging.publish(_shard_file(shard, ".metadata.parquet")) as handle:
            pq.write_table(pa.Table.from_batches(metadata, METADATA_SCHEMA), handle)
        return pa.RecordBatch.from_pylist([row], schema=schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        current, indexes, tops, metadata = None, {}, {}, []
        for shard, rows in key_runs(batches, "shard"):
            if shard != current:
                if indexes:
                    yield finish(current, indexes, tops, metadata)
                indexes = {m: faiss.deserialize_index(trained[m].value) for m in modalities}  # type: ignore[attr-defined]
                tops = {m: knn.ExactTop(queries[m].value, top_k) for m in modalities}  # type: ignore[attr-defined]
                current, metadata = shard, []
            ids = rows.column("id").to_numpy()
            for modality in modalities:
                vectors = embeddings_from_column(rows.column(f"{modality}_embedding"), dim)
                knn.add_rows(indexes[modality], vectors, ids)
                tops[modality].add_block(vectors, ids)
            metadata.append(rows.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA))
        if indexes:
            yield finish(current, indexes, tops, metadata)

    return run


def build_variant_index(
    spark: SparkSession, lake: Lake, config: IndexConfig, model_id: str, lineage: Lineage, progress: bool = False
) -> dict:
    """Build and publish the index of ``config.variant`` at the latest curated version (over the
    image embeddings and, with ``config.text_index``, over the caption embeddings under the same
    ids, the two sharing ``config.memory_budget_mb``); returns its manifest."""
    modalities = ["image", "text"] if config.text_index else ["image"]
    columns = [f"{modality}_embedding" for modality in modalities]
    version = lake.version(CURATED)
    if version is None:
        raise ValueError("curated has never been materialized: nothing to index")
    # The pair's caption-image cosine is the metadata's caption_similarity: a result's similarity
    # is its cosine to the query.
    pairs = [name for name in METADATA_SCHEMA.names if name not in ("id", "pviolence", "caption_similarity")]
    curated = (read_table(spark, lake, CURATED, version=version, columns=[*pairs, "similarity"],
                          where={"variant": [config.variant]})
               .withColumnRenamed("similarity", "caption_similarity"))
    scores = read_table(spark, lake, CLIP_SCORES, columns=["uid", "embedding_dim", *columns],
                        where={"model_id": [model_id]})
    rows = curated.join(scores, "uid", "left")
    if lake.version(IMAGE_TAGS) is None:  # never tagged: no violence tag to carry
        rows = rows.withColumn("pviolence", F.lit(None).cast("float"))
    else:
        violence = (read_table(spark, lake, IMAGE_TAGS, columns=["uid", "extra"], where={"model_id": [model_id]})
                    .select("uid", F.element_at("extra", F.lit("pviolence")).alias("pviolence")))
        rows = rows.join(violence, "uid", "left")
    numbered, n = number_by_uid(spark, rows, "id")
    numbered = numbered.persist(StorageLevel.MEMORY_AND_DISK)
    out = index_folder(lake, config.variant)
    staging_key = lake_layout.index_staging(config.variant, uuid.uuid4().hex[:12])
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(numbered.unpersist)
        cleanup.callback(lake.folder(staging_key).remove)
        if n == 0:
            raise ValueError(f"curated variant {config.variant!r} is empty at version {version}: nothing to index")
        missing = numbered.where(F.col("image_embedding").isNull()).count()
        if missing:
            raise ValueError(f"{missing} curated {config.variant} pairs have no {model_id} embedding")
        dims = [row["embedding_dim"] for row in numbered.select("embedding_dim").distinct().collect()]
        if len(dims) != 1:
            raise ValueError(f"{config.variant} embeddings have several widths {sorted(dims)}: one CLIP model at a time")
        dim = dims[0]
        plan = knn.plan_index(n, dim, (config.memory_budget_mb << 20) // len(modalities))
        log.info("kNN index of %s (%s): %s", config.variant, " and ".join(modalities), plan.reason)

        # Both modalities share the ids, the plan and the rows sampled to train and to measure recall.
        train_rows, query_rows = knn.sample_rows(n, plan.train_size, knn.RECALL_QUERIES, SEED)
        wanted = spark.createDataFrame(pa.table({"id": np.union1d(train_rows, query_rows)}))
        sample = collect(numbered.join(F.broadcast(wanted), "id").select("id", *columns)).sort_by("id")
        sample_ids = sample["id"].to_numpy()
        trained, queries = {}, {}
        for modality in modalities:
            sample_vectors = embeddings_from_column(sample[f"{modality}_embedding"], dim)
            queries[modality] = sample_vectors[np.searchsorted(sample_ids, query_rows)]
            trained[modality] = knn.trained_index(plan, sample_vectors[np.searchsorted(sample_ids, train_rows)],
                                                  progress=progress)
            del sample_vectors
        del sample

        top_k = min(RECALL_K + 1, n)
        shards = max(1, math.ceil(n / config.rows_per_shard))
        broadcast = spark.sparkContext.broadcast
        task = _shard_task({m: broadcast(faiss.serialize_index(trained[m])) for m in modalities},
                           {m: broadcast(queries[m]) for m in modalities}, dim, top_k, lake, staging_key)
        built = collect(
            numbered.withColumn("shard", F.floor(F.col("id") / config.rows_per_shard).cast("long"))
            .select("shard", *METADATA_SCHEMA.names, *columns)
            .repartition(shards, "shard")
            .sortWithinPartitions("shard", "id")
            .mapInArrow(task, from_arrow_schema(_shard_schema(modalities)))
        ).sort_by("shard").to_pylist()

        staged = cleanup.enter_context(lake.local_copy(staging_key))
        indexes, recalls = {}, {}
        for modality in modalities:
            top = knn.ExactTop(queries[modality], top_k)
            for shard in built:
                top.merge(np.frombuffer(shard[f"{modality}_top_scores"], np.float32).reshape(len(query_rows), -1),
                          np.frombuffer(shard[f"{modality}_top_ids"], np.int64).reshape(len(query_rows), -1))
            truth = knn.Truth(top.queries, query_rows, top.result()[1])
            lists_file = cleanup.enter_context(knn.new_lists_file(out)) if plan.on_disk else None
            indexes[modality] = knn.merge_shards(
                trained[modality], [staged / _shard_file(s["shard"], f".{modality}.faiss") for s in built], lists_file)
            recalls[modality] = round(float(knn.tune_nprobe(indexes[modality], plan, truth, config.recall_target)), 4)
        manifest = {
            "variant": config.variant,
            "source_table": CURATED.name,
            "source_version": version,
            "model_id": model_id,
            "vectors": n,
            "dim": int(dim),
            "factory": plan.factory,
            "lists_on_disk": plan.on_disk,
            "plan_reason": plan.reason,
            "recall_at_10": recalls["image"],
            **({"text_recall_at_10": recalls["text"]} if "text" in recalls else {}),
            "shards": [{"shard": s["shard"], "rows": s["rows"],
                        "index_bytes": {m: s[f"{m}_index_bytes"] for m in modalities}} for s in built],
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": lineage.run_id,
            knn.METADATA_MANIFEST_KEY: knn.new_metadata_name(),
        }
        with out.publish(manifest[knn.METADATA_MANIFEST_KEY]) as handle, pq.ParquetWriter(handle, METADATA_SCHEMA) as writer:
            for shard in built:  # shard order is id order
                writer.write_table(pq.read_table(staged / _shard_file(shard["shard"], ".metadata.parquet")))
        knn.save_index(out, indexes["image"], manifest, indexes.get("text"))
        return manifest
