"""The kNN index built as Spark tasks (local Spark, real faiss, real Delta tables): the same index
as one process builds from the same rows, shards listed in the manifest, lists on disk past the
memory budget, and a removal that leaves no byte of a removed vector in the index folder; the
caption embeddings' index beside the images', under the same ids."""

from __future__ import annotations

import hashlib

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faiss.contrib.inspect_tools import get_invlist

from gpu_jobs import knn_index as knn
from gpu_jobs.embedding_format import embedding_to_bytes
from gpu_jobs.knn_index import METADATA_MANIFEST_KEY, index_folder
from gpu_jobs.retrieval import remove_from_indexes
from infra.config import IndexConfig
from infra.delta_store import Lake, Lineage
from infra.lake_storage import Folder
from infra.tables import CLIP_SCORES, CURATED
from spark_jobs.knn_index_job import build_variant_index
from tests.embeddings import clustered

DIM = 32
MODEL = "demo/model"
WARC_FILES = ("a.warc.gz", "b.warc.gz")


def _lake(tmp_path, n: int, lake: Lake | None = None) -> tuple[Lake, list[str], np.ndarray, np.ndarray]:
    """``n`` curated research pairs with float16 image and caption embeddings (uids in a shuffled
    order), a few pairs only in the other variant, and embeddings of another model that must not
    be indexed; in ``lake`` if given (else a local one under ``tmp_path``). Returns the uids and
    the image and caption embeddings in id (uid) order."""
    lake = lake or Lake(str(tmp_path / "lake"))
    x, t = clustered(n + 20, DIM), clustered(n + 20, DIM, seed=1)
    uids = [hashlib.sha256(f"pair {i}".encode()).hexdigest()[:32] for i in range(n + 20)]
    curated = [{"variant": "research" if i < n else "safe", "uid": uid, "warc_file": WARC_FILES[i % 2],
                "url": f"http://h.example/{i}.jpg", "caption": f"c {i}", "similarity": 0.3, "model_id": MODEL,
                "cluster_size": 1} for i, uid in enumerate(uids)]
    scores = [{"uid": uid, "warc_file": WARC_FILES[i % 2], "model_id": model, "embedding_dim": DIM,
               "image_embedding": embedding_to_bytes(x[i] if model == MODEL else -x[i]),
               "text_embedding": embedding_to_bytes(t[i]), "similarity": 0.3}
              for i, uid in enumerate(uids) for model in (MODEL, "other/model")]
    lake.overwrite(CURATED, pa.Table.from_pylist(curated, schema=CURATED.schema), Lineage())
    lake.replace_partitions(CLIP_SCORES, pa.Table.from_pylist(scores, schema=CLIP_SCORES.schema), list(WARC_FILES),
                            Lineage())
    order = np.argsort(uids[:n])
    return lake, [uids[i] for i in order], x[:n][order].astype(np.float16), t[:n][order].astype(np.float16)


def _same_search(a: faiss.Index, b: faiss.Index, queries: np.ndarray) -> None:
    scores_a, ids_a = knn.search(a, queries, 10)
    scores_b, ids_b = knn.search(b, queries, 10)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5)


@pytest.mark.parametrize("rows, rows_per_shard, factory, shards", [
    (24_000, 5_000, "IVF512,Flat", [5_000] * 4 + [4_000]),  # above FLAT_MAX_ROWS: a trained quantizer
    (24_000, 100_000, "IVF512,Flat", [24_000]),
    (3_000, 1_000, "IDMap2,Flat", [1_000] * 3),  # exact search
])
def test_the_spark_index_is_the_one_process_index(spark, tmp_path, rows, rows_per_shard, factory, shards):
    lake, uids, x, t = _lake(tmp_path, rows)
    config = IndexConfig(variant="research", memory_budget_mb=64, rows_per_shard=rows_per_shard)
    manifest = build_variant_index(spark, lake, config, MODEL, Lineage(run_id="r1"))
    ids = np.arange(len(uids))
    plan = knn.plan_index(len(uids), DIM, 32 << 20)  # the two indexes share the budget
    assert manifest["factory"] == factory and not manifest["lists_on_disk"]
    assert [s["rows"] for s in manifest["shards"]] == shards
    for modality, vectors, recall in (("image", x, "recall_at_10"), ("text", t, "text_recall_at_10")):
        index, stored = knn.load_index(index_folder(lake, "research"), modality)
        expected = knn.build_index(vectors, ids, plan)
        assert stored["factory"] == factory
        assert manifest[recall] == pytest.approx(knn.measure_recall(expected, vectors, ids), abs=1e-4)
        _same_search(index, expected, vectors[::97])
        if factory.startswith("IVF"):
            assert faiss.extract_index_ivf(index).nprobe == faiss.extract_index_ivf(expected).nprobe
            for cell in (0, 17, 511):  # the lists hold the same ids in the same order
                assert (get_invlist(faiss.extract_index_ivf(index).invlists, cell)[0]
                        == get_invlist(faiss.extract_index_ivf(expected).invlists, cell)[0]).all()
    metadata = pq.read_table(index_folder(lake, "research").open(manifest[METADATA_MANIFEST_KEY]))
    assert metadata.select(["id", "uid"]).to_pydict() == {"id": list(ids), "uid": uids}
    row_of = {hashlib.sha256(f"pair {i}".encode()).hexdigest()[:32]: i for i in range(len(uids))}
    assert metadata["url"].to_pylist() == [f"http://h.example/{row_of[u]}.jpg" for u in uids]
    assert metadata["caption_similarity"].to_pylist() == pytest.approx([0.3] * len(uids)) and metadata["pviolence"].null_count == len(uids)
    assert index_folder(lake, "research").names() == sorted(["index.faiss", "manifest.json", "text.faiss",
                                                             manifest[METADATA_MANIFEST_KEY]])
    assert index_folder(lake, "research").folders() == []  # no staging left


def _files_holding(folder: Folder, needles: list[bytes]) -> set[str]:
    return {name for name in folder.names() if any(n in folder.read_bytes(name) for n in needles)}


def test_lists_on_disk_past_the_memory_budget_and_a_removal_leaves_no_byte(spark, tmp_path):
    # 90k x 32-d: full vectors need 12 MB and 4-byte PQ codes 1.2 MB, so 1 MB keeps the lists on disk.
    lake, uids, x, t = _lake(tmp_path, 90_000)
    config = IndexConfig(variant="research", memory_budget_mb=1, rows_per_shard=20_000)
    manifest = build_variant_index(spark, lake, config, MODEL, Lineage(run_id="r1"))
    folder = index_folder(lake, "research")
    assert manifest["lists_on_disk"] and manifest["factory"] == "IVF1024,Flat" and len(manifest["shards"]) == 5
    plan = knn.plan_index(len(uids), DIM, 1 << 19)
    lists = {}
    for modality, vectors in (("image", x), ("text", t)):
        index, _ = knn.load_index(folder, modality)
        lists[modality] = knn.lists_file_of(index)
        assert lists[modality].parent == folder.local_path  # memory-mapped in place
        _same_search(index, knn.build_index(vectors, np.arange(len(uids)), plan), vectors[::997])
    assert sorted(p.name for p in folder.local_path.glob("*.ivfdata")) == sorted(p.name for p in lists.values())

    removed_rows = [5, 500, 50_000]
    # IVF-Flat stores float32 vectors: each removed pair's image and caption vector
    needles = {m: [v[row].astype(np.float32).tobytes() for row in removed_rows] for m, v in (("image", x), ("text", t))}
    for modality in ("image", "text"):
        assert _files_holding(folder, needles[modality]) == {lists[modality].name}
    removed = remove_from_indexes(lake, {uids[row] for row in removed_rows}, lake.version(CURATED))
    assert removed == {"research": 3}
    assert not any(p.exists() for p in lists.values())
    assert not _files_holding(folder, needles["image"] + needles["text"])
    kept = [6, 501, 50_001]
    for modality, vectors in (("image", x), ("text", t)):
        index, stored = knn.load_index(folder, modality)
        assert index.ntotal == len(uids) - 3 == stored["vectors"]
        _, found = knn.search(index, vectors[removed_rows].astype(np.float32), 10)
        assert not np.isin(found, removed_rows).any()
        assert (knn.search(index, vectors[kept].astype(np.float32), 1)[1][:, 0] == kept).all()


def test_a_failed_build_leaves_nothing_behind(spark, tmp_path):
    lake, *_ = _lake(tmp_path, 500)
    with pytest.raises(ValueError, match="have no demo/other embedding"):
        build_variant_index(spark, lake, IndexConfig(variant="research"), "demo/other", Lineage(run_id="r1"))
    folder = index_folder(lake, "research")
    assert folder.names() == [] and folder.folders() == []


@pytest.mark.parametrize("rows, budget_mb, rows_per_shard, on_disk", [
    (3_000, 64, 1_000, False),  # exact search, in memory
    (90_000, 1, 20_000, True),  # the lists on disk: built in a local file, uploaded beside the index
])
def test_an_index_in_a_bucket_finds_what_a_local_one_finds_and_a_removal_leaves_no_byte(
        spark, tmp_path, s3_lake, monkeypatch, rows, budget_mb, rows_per_shard, on_disk):
    cache = tmp_path / "cache"
    monkeypatch.setattr(knn, "CACHE_DIR", cache)
    local, uids, x, t = _lake(tmp_path, rows)
    _lake(tmp_path, rows, s3_lake)
    config = IndexConfig(variant="research", memory_budget_mb=budget_mb, rows_per_shard=rows_per_shard)
    in_bucket = build_variant_index(spark, s3_lake, config, MODEL, Lineage(run_id="r1"))
    in_folder = build_variant_index(spark, local, config, MODEL, Lineage(run_id="r1"))
    assert in_bucket["lists_on_disk"] == in_folder["lists_on_disk"] == on_disk
    assert (in_bucket["factory"], in_bucket["shards"]) == (in_folder["factory"], in_folder["shards"])
    folder = index_folder(s3_lake, "research")
    metadata_file = in_bucket[METADATA_MANIFEST_KEY]
    assert folder.names() == sorted(["index.faiss", "manifest.json", "text.faiss", metadata_file,
                                     *folder.names("lists-*.ivfdata")])
    assert len(folder.names("*.ivfdata")) == 2 * on_disk and folder.folders() == []  # the staging prefix is gone
    index, _ = knn.load_index(folder)
    if on_disk:
        assert cache in knn.lists_file_of(index).parents  # a local copy, memory-mapped
    _same_search(index, knn.load_index(index_folder(local, "research"))[0], x[::97].astype(np.float32))
    text_index, _ = knn.load_index(folder, "text")
    _same_search(text_index, knn.load_index(index_folder(local, "research"), "text")[0], t[::97].astype(np.float32))
    assert pq.read_table(folder.open(metadata_file)).select(["id", "uid"]).to_pydict() == {"id": list(range(rows)), "uid": uids}

    removed_rows = [5, 500, rows - 1]
    # both flat types store float32: each removed pair's image and caption vectors
    needles = [v[row].astype(np.float32).tobytes() for v in (x, t) for row in removed_rows]
    assert _files_holding(folder, needles[:3]) and _files_holding(folder, needles[3:])
    removed = remove_from_indexes(s3_lake, {uids[row] for row in removed_rows}, s3_lake.version(CURATED))
    assert removed == {"research": 3}
    assert not _files_holding(folder, needles)
    assert not [p for p in cache.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]
    left = pq.read_table(folder.open(knn.metadata_name(folder)))
    assert metadata_file not in folder.names()  # the save without them replaced it
    assert left.num_rows == rows - 3 and not set(left["uid"].to_pylist()) & {uids[row] for row in removed_rows}
    index, stored = knn.load_index(folder)
    assert index.ntotal == rows - 3 == stored["vectors"]
    _, found = knn.search(index, x[removed_rows].astype(np.float32), 10)
    assert not np.isin(found, removed_rows).any()
    kept = [6, 501, rows - 2]
    assert (knn.search(index, x[kept].astype(np.float32), 1)[1][:, 0] == kept).all()
    text_index, _ = knn.load_index(folder, "text")
    assert text_index.ntotal == rows - 3 and (knn.search(text_index, t[kept].astype(np.float32), 1)[1][:, 0] == kept).all()
