"""Near-duplicate clusters on synthetic clustered embeddings with planted duplicates (real faiss)."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_jobs.near_duplicates import EXACT_MAX_ROWS, near_duplicate_clusters
from tests.embeddings import clustered

DIM = 64
THRESHOLD = 0.95


def at_cosine(a: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with unit ``a`` is exactly ``cosine`` (up to float32 rounding)."""
    u = rng.standard_normal(a.shape).astype(np.float32)
    u -= (u @ a) * a
    u /= np.linalg.norm(u)
    return cosine * a + np.sqrt(1 - cosine**2) * u


def planted(n: int) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """``n`` clustered rows with duplicates written over some of them; returns (x, preference, groups)."""
    x = clustered(n)
    rng = np.random.default_rng(1)
    preference = rng.uniform(0, 1, n)
    rows = iter(rng.permutation(n)[:200].tolist())
    groups: dict[str, list[int]] = {}
    exact = [next(rows) for _ in range(3)]  # three exact copies, the last one preferred
    x[exact] = x[exact[0]]
    preference[exact] = [0.1, 0.2, 5.0]
    groups["exact"] = exact
    near = [next(rows), next(rows)]  # a near duplicate at cosine 0.99
    x[near[1]] = at_cosine(x[near[0]], 0.99, rng)
    groups["near"] = near
    tied = [next(rows), next(rows)]  # equal preference: the lower row represents
    x[tied[1]] = at_cosine(x[tied[0]], 0.97, rng)
    preference[tied] = 3.0
    groups["tied"] = tied
    below = [next(rows), next(rows)]  # just under the threshold: not merged
    x[below[1]] = at_cosine(x[below[0]], THRESHOLD - 0.003, rng)
    groups["below"] = below
    a, b = next(rows), next(rows)  # chain a~b~c at 0.96 each, cos(a, c) = 2*0.96^2-1 = 0.84
    u = at_cosine(x[a], 0.0, rng)
    theta = np.arccos(0.96)
    x[b] = np.cos(theta) * x[a] + np.sin(theta) * u
    c = next(rows)
    x[c] = np.cos(2 * theta) * x[a] + np.sin(2 * theta) * u
    groups["chain"] = [a, b, c]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, preference, groups


@pytest.fixture(scope="module", params=[5_000, 3 * EXACT_MAX_ROWS // 2], ids=["exact", "ivf"])
def case(request):
    x, preference, groups = planted(request.param)
    return x, preference, groups, near_duplicate_clusters(x, THRESHOLD, preference)


def test_planted_duplicates_cluster_with_the_preferred_representative(case):
    x, preference, groups, result = case
    for name, expected_rep in [("exact", groups["exact"][2]), ("near", None), ("tied", min(groups["tied"])),
                               ("chain", None)]:
        members = groups[name]
        if expected_rep is None:
            expected_rep = max(members, key=lambda r: (preference[r], -r))
        assert (result.cluster[members] == expected_rep).all(), name
        assert result.representative[members].tolist() == [r == expected_rep for r in members], name
        assert (result.cluster_size[members] == len(members)).all(), name
    np.testing.assert_allclose(result.max_similarity[groups["exact"]], 1.0, atol=1e-5)
    np.testing.assert_allclose(result.max_similarity[groups["near"]], 0.99, atol=1e-4)
    np.testing.assert_allclose(result.max_similarity[groups["chain"]], 0.96, atol=1e-4)  # a-c is never a pair


def test_threshold_respected_and_unrelated_rows_stay_single(case):
    x, _, groups, result = case
    below = groups["below"]
    assert float(x[below[0]] @ x[below[1]]) == pytest.approx(THRESHOLD - 0.003, abs=1e-5)
    planted_rows = [r for name, rows in groups.items() if name != "below" for r in rows]
    single = np.setdiff1d(np.arange(len(x)), planted_rows)
    assert (result.cluster[single] == single).all()  # "below" included: just under the threshold
    assert result.representative[single].all() and (result.cluster_size[single] == 1).all()
    assert np.isnan(result.max_similarity[single]).all()
    assert result.num_clusters == len(x) - (2 + 1 + 1 + 2)  # rows absorbed by the four planted groups


def test_result_is_deterministic(case):
    x, preference, _, first = case
    second = near_duplicate_clusters(x, THRESHOLD, preference)
    for field in ("cluster", "representative", "cluster_size", "max_similarity"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))


def test_float16_embeddings_as_stored():
    x, preference, groups = planted(2_000)
    result = near_duplicate_clusters(x.astype(np.float16), THRESHOLD, preference)
    assert (result.cluster[groups["exact"]] == groups["exact"][2]).all()
    assert (result.cluster[groups["near"]] == result.cluster[groups["near"][0]]).all()


def test_a_large_group_of_copies_is_one_cluster():
    x = clustered(1_000)
    x[:100] = x[0]  # 100 copies of one image
    result = near_duplicate_clusters(x, THRESHOLD, np.zeros(1_000), k=99)
    assert (result.cluster[:100] == 0).all() and (result.cluster_size[:100] == 100).all()
    assert (result.cluster_size[100:] == 1).all()


def test_bad_input_is_refused():
    x = clustered(100)
    with pytest.raises(ValueError, match="preference"):
        near_duplicate_clusters(x, THRESHOLD, np.zeros(99))
    with pytest.raises(ValueError, match="preference"):
        near_duplicate_clusters(x, THRESHOLD, np.full(100, np.nan))
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_clusters(x, 1.5, np.zeros(100))
    with pytest.raises(ValueError, match="L2-normalised"):
        near_duplicate_clusters(x * 3, THRESHOLD, np.zeros(100))
    empty = near_duplicate_clusters(np.empty((0, DIM), np.float32), THRESHOLD, np.empty(0))
    assert empty.cluster.shape == (0,) and empty.num_clusters == 0
