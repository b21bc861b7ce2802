"""Near-duplicate clusters as Spark tasks (local Spark, real faiss): the same clusters as the
one-process search, planted duplicates found across k-means cells, and long chains joined."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from gpu_jobs import near_duplicates
from gpu_jobs.near_duplicates import near_duplicate_clusters as one_process_clusters
from spark_jobs import near_duplicates_job
from spark_jobs.near_duplicates_job import near_duplicate_clusters
from tests.embeddings import clustered
from tests.gpu_jobs.test_near_duplicates import DIM, THRESHOLD, at_cosine, planted


def _uid(row: int) -> str:
    return f"{row:06d}"


def spark_clusters(spark, x: np.ndarray, preference: np.ndarray, k: int = 16, driver_max_rows: int = 0) -> dict[str, dict]:
    """The Spark job over ``x`` stored as the lake stores it (float16 bytes); rows by uid. Spark's
    own search and label propagation unless ``driver_max_rows`` lets the driver do it."""
    x16 = x.astype(np.float16)
    table = pa.table({
        "uid": [_uid(row) for row in range(len(x))],
        "rank": -preference,
        "image_embedding": pa.array([row.tobytes() for row in x16], pa.binary()),
    })
    reps = spark.createDataFrame(table).repartition(3).persist()
    try:
        result = near_duplicate_clusters(spark, reps, len(x), F.struct("rank", "uid"), x.shape[1], THRESHOLD, k,
                                         nprobe=4, max_cells=1024, driver_max_rows=driver_max_rows)
        return {row["uid"]: row for row in result.toArrow().to_pylist()}
    finally:
        reps.unpersist()


def assert_same_as_one_process(found: dict[str, dict], x: np.ndarray, preference: np.ndarray) -> None:
    expected = one_process_clusters(x.astype(np.float16), THRESHOLD, preference)
    assert len(found) == len(x)
    for row in range(len(x)):
        got = found[_uid(row)]
        assert got["cluster"] == _uid(expected.cluster[row]), row
        assert got["cluster_size"] == expected.cluster_size[row], row
        if np.isnan(expected.max_similarity[row]):
            assert got["max_similarity"] is None, row
        else:
            assert got["max_similarity"] == pytest.approx(expected.max_similarity[row], abs=1e-6), row


def test_one_cell_gives_the_one_process_clusters(spark):
    x, preference, _ = planted(3_000)
    assert_same_as_one_process(spark_clusters(spark, x, preference), x, preference)


def test_planted_duplicates_found_across_cells(spark, monkeypatch):
    x, preference, groups = planted(5_000)
    # 5,000 rows in 64 cells of ~80: each row searches 4 of them.
    monkeypatch.setattr(near_duplicates_job, "cell_count", lambda rows: near_duplicates.cell_count(rows, 1_000))
    found = spark_clusters(spark, x, preference)
    assert_same_as_one_process(found, x, preference)  # the planted links straddle no cell here
    assert {found[_uid(r)]["cluster"] for r in groups["exact"]} == {_uid(groups["exact"][2])}
    assert {found[_uid(r)]["cluster"] for r in groups["tied"]} == {_uid(min(groups["tied"]))}
    assert spark_clusters(spark, x, preference) == found  # deterministic


def test_a_long_chain_is_one_cluster_led_by_its_most_preferred_row(spark):
    # 40 rows on one great circle, 0.96 cosine apart: only neighbours link, so the component's
    # diameter is 39 and the labels need several propagation rounds.
    x = clustered(500)
    rng = np.random.default_rng(3)
    u = at_cosine(x[0], 0.0, rng)
    theta = np.arccos(0.96)
    x[:40] = [np.cos(i * theta) * x[0] + np.sin(i * theta) * u for i in range(40)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    preference = np.zeros(len(x))
    preference[23] = 1.0  # the middle of the chain is preferred
    found = spark_clusters(spark, x, preference)
    assert {found[_uid(r)]["cluster"] for r in range(40)} == {_uid(23)}
    assert {found[_uid(r)]["cluster_size"] for r in range(40)} == {40}
    assert all(found[_uid(r)]["cluster"] == _uid(r) for r in range(40, len(x)))
    assert_same_as_one_process(found, x, preference)


def test_no_rows_no_clusters(spark):
    assert spark_clusters(spark, np.empty((0, DIM), np.float32), np.empty(0)) == {}
    assert spark_clusters(spark, np.empty((0, DIM), np.float32), np.empty(0), driver_max_rows=100) == {}


def test_an_exact_search_sized_input_clustered_in_the_driver_gives_the_spark_clusters(spark):
    x, preference, groups = planted(3_000)
    in_driver = spark_clusters(spark, x, preference, driver_max_rows=near_duplicates.EXACT_MAX_ROWS)
    assert in_driver == spark_clusters(spark, x, preference)
    assert {in_driver[_uid(r)]["cluster"] for r in groups["exact"]} == {_uid(groups["exact"][2])}
    assert len({row["cluster"] for row in in_driver.values()}) < len(x)
