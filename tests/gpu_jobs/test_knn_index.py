"""kNN index: plan choice, planted neighbours, recall, removal, save/load (real faiss, synthetic clustered data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np
import pytest

from gpu_jobs.knn_index import (
    CACHE_DIR,
    IndexLoadError,
    build_index,
    load_index,
    measure_recall,
    plan_index,
    remove_ids,
    save_index,
    search,
)
from infra.lake_storage import Folder
from tests.embeddings import clustered

DIM = 64
GIB = 2**30


@pytest.fixture(scope="module")
def data_50k() -> tuple[np.ndarray, np.ndarray]:
    return clustered(50_000), np.arange(50_000, dtype=np.int64) * 7 + 3  # ids unlike row numbers


@pytest.fixture(scope="module")
def ivf_50k(data_50k):
    x, ids = data_50k
    return build_index(x, ids, plan_index(len(x), DIM, GIB))


def test_plan_picks_flat_then_ivf_flat_then_ivf_pq_then_lists_on_disk():
    assert plan_index(10_000, 512, GIB).factory == "IDMap2,Flat"
    assert plan_index(19_999, 512, GIB).factory == "IDMap2,Flat"
    assert plan_index(20_000, 512, GIB).factory.startswith("IVF")

    big = plan_index(1_000_000, 512, 4 * GIB)  # 2 GB of vectors fit
    assert big.factory == "IVF4096,Flat" and big.nlist == 4096
    assert big.train_size + 1000 <= 1_000_000 and big.train_size >= 39 * big.nlist
    assert big.metric == faiss.METRIC_INNER_PRODUCT
    assert "1,969 MB" in big.reason and "4,096 MB" in big.reason

    assert plan_index(1_000_000, 512, GIB // 2).factory == "IVF4096,PQ64np"  # 72 MB of codes + ids
    small_budget = plan_index(1_000_000, 512, 60 * 2**20)
    assert small_budget.factory == "IVF4096,PQ32np" and small_budget.estimated_bytes <= 60 * 2**20
    assert "over 60 MB" in small_budget.reason
    assert plan_index(50_000, DIM, GIB).factory == "IVF1024,Flat"  # 4 * sqrt(50k) = 894 -> 1024

    on_disk = plan_index(1_000_000, 512, 10 * 2**20)  # even 8-byte codes need 16 MB: lists on disk
    assert on_disk.on_disk and on_disk.factory == "IVF4096,Flat" and on_disk.estimated_bytes == 4096 * 2048
    assert not big.on_disk and not small_budget.on_disk
    with pytest.raises(ValueError, match="even its 4096 centroids"):
        plan_index(1_000_000, 512, 4 * 2**20)
    with pytest.raises(ValueError, match="exact index"):
        plan_index(10_000, 512, 2**20)


def test_ivf_returns_planted_neighbours(data_50k, ivf_50k):
    x, ids = data_50k
    rows = np.arange(0, 50_000, 97)
    scores, found = search(ivf_50k, x[rows], 5)
    assert (found[:, 0] == ids[rows]).all()  # a stored vector is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()

    # a slightly moved copy of row r finds r first, well above the rest of its blob (~0.8)
    rng = np.random.default_rng(5)
    moved = x[rows] + 0.05 / np.sqrt(DIM) * rng.standard_normal((len(rows), DIM)).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    scores, found = search(ivf_50k, moved, 2)
    assert (found[:, 0] == ids[rows]).all() and (scores[:, 0] > 0.99).all() and (scores[:, 1] < 0.95).all()


def test_recall_tuned_to_target_on_50k(data_50k, ivf_50k):
    x, ids = data_50k
    ivf = faiss.extract_index_ivf(ivf_50k)
    tuned = ivf.nprobe
    assert 1 < tuned < 256  # tuning had to raise nprobe, and stopped before the cap
    assert measure_recall(ivf_50k, x, ids) >= 0.95
    try:
        ivf.nprobe = 1
        assert measure_recall(ivf_50k, x, ids) < 0.95  # so the measurement can fail
    finally:
        ivf.nprobe = tuned


def test_measure_recall_of_an_exact_and_a_scrambled_index(data_50k):
    x, ids = data_50k
    exact = build_index(x[:10_000], ids[:10_000], plan_index(10_000, DIM, GIB))
    assert measure_recall(exact, x[:10_000], ids[:10_000]) == pytest.approx(1.0)
    wrong_ids = np.random.default_rng(1).permutation(ids[:10_000])
    scrambled = build_index(x[:10_000], wrong_ids, plan_index(10_000, DIM, GIB))
    assert measure_recall(scrambled, x[:10_000], ids[:10_000]) < 0.05
    for n in (1, 5):  # fewer rows than k: every neighbour there is must be found
        tiny = build_index(x[:n], ids[:n], plan_index(n, DIM, GIB))
        assert measure_recall(tiny, x[:n], ids[:n]) == 1.0


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq"])
def test_remove_ids_never_come_back(kind, data_50k, ivf_50k):
    x, ids = data_50k
    if kind == "ivf-flat":
        index = faiss.clone_index(ivf_50k)
    else:
        n, budget = (5_000, GIB) if kind == "flat" else (21_000, 2**20)
        x, ids = x[:n], ids[:n]
        plan = plan_index(n, DIM, budget)
        assert plan.factory == ("IDMap2,Flat" if kind == "flat" else "IVF256,PQ8np")
        index = build_index(x, ids, plan)
    removed_rows = np.random.default_rng(2).choice(len(x), 500, replace=False)
    removed = ids[removed_rows]
    before = index.ntotal
    assert remove_ids(index, np.concatenate([removed, [10**12, 10**12 + 1]])) == 500  # absent ids not counted
    assert index.ntotal == before - 500
    assert remove_ids(index, removed) == 0
    _, found = search(index, x[removed_rows], 20)
    assert not np.isin(found, removed).any()
    kept_rows = np.setdiff1d(np.arange(len(x)), removed_rows)[:200]
    _, found = search(index, x[kept_rows], 10)
    if kind == "ivf-pq":  # approximate scores: the row itself may be outranked by a blob-mate
        assert (found == ids[kept_rows, None]).any(axis=1).mean() >= 0.95
    else:
        assert (found[:, 0] == ids[kept_rows]).all()


def test_remove_ids_refuses_index_types_that_cannot_remove_by_id():
    with pytest.raises(ValueError, match="IndexFlatIP cannot remove"):
        remove_ids(faiss.IndexFlatIP(DIM), np.array([1]))  # would renumber the remaining rows
    with pytest.raises(ValueError, match="IndexHNSWFlat cannot remove"):
        remove_ids(faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT), np.array([1]))


def test_build_rejects_unnormalised_vectors_and_duplicate_ids(data_50k):
    x, ids = data_50k
    plan = plan_index(1000, DIM, GIB)
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(x[:1000] * 2, ids[:1000], plan)
    with pytest.raises(ValueError, match="unique"):
        build_index(x[:1000], np.zeros(1000, dtype=np.int64), plan)
    float16 = build_index(x[:1000].astype(np.float16), ids[:1000], plan)  # the stored embedding format
    assert search(float16, x[:1], 1)[1][0, 0] == ids[0]


def test_save_load_round_trip(tmp_path, data_50k, ivf_50k):
    x, _ = data_50k
    directory = tmp_path / "knn"
    folder = Folder.local(directory)
    save_index(folder, ivf_50k, {"table_version": 7, "model": "ViT-B-32"})
    assert sorted(p.name for p in directory.iterdir()) == ["index.faiss", "manifest.json"]  # no temp files left
    loaded, manifest = load_index(folder)
    assert manifest["table_version"] == 7 and manifest["model"] == "ViT-B-32"
    assert manifest["faiss_index"]["ntotal"] == 50_000
    assert faiss.extract_index_ivf(loaded).nprobe == faiss.extract_index_ivf(ivf_50k).nprobe
    queries = x[np.arange(0, 50_000, 211)]
    for a, b in zip(search(ivf_50k, queries, 10), search(loaded, queries, 10)):
        np.testing.assert_array_equal(a, b)

    save_index(folder, loaded, {"table_version": 8})  # replacing a saved index
    assert load_index(folder)[1]["table_version"] == 8
    with pytest.raises(ValueError, match="reserved"):
        save_index(folder, loaded, {"faiss_index": 1})


def test_a_save_holds_the_caption_index_under_the_same_ids_and_drops_it_when_not_given(tmp_path, data_50k):
    x, ids = data_50k
    captions = clustered(1000, DIM, seed=5)  # other vectors than the images'
    plan = plan_index(1000, DIM, GIB)
    folder = Folder.local(tmp_path / "knn")
    save_index(folder, build_index(x[:1000], ids[:1000], plan), {"v": 1}, build_index(captions, ids[:1000], plan))
    assert folder.names() == ["index.faiss", "manifest.json", "text.faiss"]
    images, manifest = load_index(folder)
    text, same = load_index(folder, "text")
    assert manifest == same and manifest["faiss_index"]["save_id"] == manifest["faiss_text_index"]["save_id"]
    assert search(images, x[[7]], 1)[1][0, 0] == ids[7] and search(text, captions[[7]], 1)[1][0, 0] == ids[7]
    assert search(text, x[[7]], 1)[1][0, 0] != ids[7]  # the caption index holds the captions' vectors

    (folder.local_path / "text.faiss").write_bytes(b"\x00" * 10)  # another save's file, or a torn one
    with pytest.raises(IndexLoadError, match="text.faiss is 10 bytes, its manifest says"):
        load_index(folder, "text")

    save_index(folder, images, {"v": 2})  # a save without captions leaves no caption vector behind
    assert folder.names() == ["index.faiss", "manifest.json"]
    with pytest.raises(IndexLoadError, match="holds no text index .* materialize knn_index again"):
        load_index(folder, "text")
    with pytest.raises(ValueError, match="reserved"):
        save_index(folder, images, {"faiss_text_index": 1})


def test_load_of_missing_or_corrupt_directory_names_the_path(tmp_path, data_50k):
    x, ids = data_50k
    with pytest.raises(IndexLoadError, match=f"no kNN index at {tmp_path / 'absent'}: index.faiss is missing"):
        load_index(Folder.local(tmp_path / "absent"))

    directory = tmp_path / "knn"
    folder = Folder.local(directory)
    save_index(folder, build_index(x[:1000], ids[:1000], plan_index(1000, DIM, GIB)), {})
    index_file, manifest_file = directory / "index.faiss", directory / "manifest.json"
    good_manifest = manifest_file.read_text()

    size = index_file.stat().st_size
    index_file.write_bytes(b"\x00" * size)  # same size, not a faiss file
    with pytest.raises(IndexLoadError) as raised:
        load_index(folder)
    assert str(raised.value).startswith(f"corrupt kNN index {index_file}: ") and "\n" not in str(raised.value)

    index_file.write_bytes(b"\x00" * (size // 2))  # truncated
    with pytest.raises(IndexLoadError, match="torn or mixed save"):
        load_index(folder)

    manifest_file.write_text(good_manifest[:-10])
    with pytest.raises(IndexLoadError, match=f"corrupt kNN index manifest {manifest_file}"):
        load_index(folder)
    manifest_file.write_text(json.dumps({"no": "index entry"}))
    with pytest.raises(IndexLoadError, match="corrupt kNN index manifest"):
        load_index(folder)


def test_the_index_cache_is_where_pairlake_index_cache_says(tmp_path):
    """The tests give every run its own cache (tests/conftest.py), so that the copies of the index
    folders they make go when the run ends."""
    probe = "import gpu_jobs.knn_index as k; print(k.CACHE_DIR)"
    env = {**os.environ, "PAIRLAKE_INDEX_CACHE": str(tmp_path / "cache")}
    moved = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert moved.stdout.strip() == str(tmp_path / "cache")
    assert CACHE_DIR == Path(os.environ["PAIRLAKE_INDEX_CACHE"]) != Path(tempfile.gettempdir()) / "pairlake-index-cache"
