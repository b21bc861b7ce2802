"""A faiss kNN index over L2-normalised CLIP embeddings (inner product = cosine similarity).

The index type is chosen like autofaiss does, from the row count and a memory budget: exact search
while that is cheap, then IVF (inverted lists over k-means cells) with full vectors, then IVF with
product-quantised codes when full vectors do not fit. Every type this module builds supports
``remove_ids``, so opted-out uids can be dropped without a rebuild: flat storage is wrapped in
``IDMap2`` (a bare flat index would renumber the rows after a removal) and HNSW is never the
top-level structure (it cannot remove).

Sampling: one seeded permutation of the rows serves both sides. Its head is the quantizer's
training sample and its tail the recall queries, so with the same seed the queries are "held
out" (not used to train the quantizer) whenever ``train_size + queries <= n``. The queries are
still stored in the index, which is how the index is used on its own data (kNN of every image);
recall ignores the query's own id so that finding itself does not count.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

FLAT_MAX_ROWS = 20_000  # below this exact search costs < ~1 ms/query at 512-d: no approximation
TRAIN_POINTS_PER_LIST = 40  # faiss k-means warns below 39 points per centroid
RECALL_QUERIES = 1000
ADD_BATCH = 65_536
MAX_NPROBE = 256
DEFAULT_NPROBE = 16
PLATEAU_GAIN = 1e-3  # nprobe tuning stops when a step gains less recall than this
IDMAP2_BYTES_PER_ROW = 56  # id vector + reverse hash map entry
NORM_TOLERANCE = 1e-2  # float16-stored embeddings are normalised to ~1e-3

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
MANIFEST_INDEX_KEY = "faiss_index"  # added by save_index: what the index file must match


class IndexLoadError(RuntimeError):
    """A saved index directory is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # faiss.index_factory string
    dim: int
    metric: int  # faiss.METRIC_INNER_PRODUCT: cosine on normalised vectors
    nlist: int  # IVF cells; 0 for exact search
    nprobe: int  # cells searched per query when build_index is not asked to tune it; 0 for exact
    max_nprobe: int  # upper bound for nprobe tuning
    train_size: int  # rows in the quantizer's training sample; 0 for exact
    estimated_bytes: int  # index size in memory once all rows are added
    reason: str


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MB"


def _pq_sizes(dim: int) -> list[int]:
    """Sub-quantizer counts for ``PQ{m}``, best first: ``m`` divides ``dim``, >= 8 dims each.

    4-dim sub-vectors (twice the bytes) trained ~7x slower per sub-quantizer than 8-dim ones on a
    2-core CPU, which at 512-d would make PQ training take the better part of an hour.
    """
    return [m for m in range(dim // 8, 3, -1) if dim % m == 0]


def plan_index(n: int, dim: int, memory_budget_bytes: int) -> IndexPlan:
    """Pick the index type for ``n`` vectors of ``dim`` within ``memory_budget_bytes`` of index memory.

    Exact (``IDMap2,Flat``) for fewer than ``FLAT_MAX_ROWS`` rows; otherwise ``IVF{nlist},Flat`` with
    nlist = 4*sqrt(n) rounded to a power of two when the full vectors fit the budget, else
    ``IVF{nlist},PQ{m}np`` with the largest code size that fits. The budget covers the built index,
    not the caller's copy of the embeddings during the build. No OPQ rotation and no polysemous
    training (``np``): on 2 cores each multiplied the training time by 5-15x (measured at 50k rows)
    for at most a few points of recall.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"need n >= 1 and dim >= 1, got n={n}, dim={dim}")
    metric = faiss.METRIC_INNER_PRODUCT
    vector_bytes = 4 * dim
    budget = _mb(memory_budget_bytes)
    flat_bytes = n * (vector_bytes + IDMAP2_BYTES_PER_ROW)
    if n < FLAT_MAX_ROWS:
        if flat_bytes > memory_budget_bytes:
            raise ValueError(f"exact index for {n:,} x {dim} needs {_mb(flat_bytes)}, over the {budget} budget")
        return IndexPlan("IDMap2,Flat", dim, metric, 0, 0, 0, 0, flat_bytes,
                         f"{n:,} rows < {FLAT_MAX_ROWS:,}: exact search, {_mb(flat_bytes)} within {budget}")

    held_out = min(RECALL_QUERIES, n // 10)
    nlist = min(2 ** round(math.log2(4 * math.sqrt(n))),
                2 ** int(math.log2((n - held_out) // TRAIN_POINTS_PER_LIST)))
    train_size = TRAIN_POINTS_PER_LIST * nlist
    nprobe, max_nprobe = min(DEFAULT_NPROBE, nlist), min(MAX_NPROBE, nlist)
    centroid_bytes = nlist * vector_bytes
    ivf_flat_bytes = n * (vector_bytes + 8) + centroid_bytes
    if ivf_flat_bytes <= memory_budget_bytes:
        return IndexPlan(f"IVF{nlist},Flat", dim, metric, nlist, nprobe, max_nprobe, train_size, ivf_flat_bytes,
                         f"{n:,} rows: IVF over {nlist} cells with full vectors, "
                         f"{_mb(ivf_flat_bytes)} within {budget}")
    for m in _pq_sizes(dim):
        pq_bytes = n * (m + 8) + centroid_bytes + 256 * dim * 4
        if pq_bytes <= memory_budget_bytes:
            return IndexPlan(f"IVF{nlist},PQ{m}np", dim, metric, nlist, nprobe, max_nprobe, train_size, pq_bytes,
                             f"{n:,} rows: full vectors need {_mb(ivf_flat_bytes)}, over {budget}; "
                             f"IVF over {nlist} cells with {m}-byte PQ codes, {_mb(pq_bytes)} "
                             f"(approximate scores: recall may stay below target)")
    raise ValueError(f"no index for {n:,} x {dim} fits {budget}: full vectors need {_mb(ivf_flat_bytes)} "
                     f"and the smallest PQ codes still more than the budget")


def _sample_order(n: int, seed: int) -> np.ndarray:
    """The seeded row permutation: training sample from the head, recall queries from the tail."""
    return np.random.default_rng(seed).permutation(n)


def _float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def _check_normalised(x: np.ndarray) -> None:
    norms = np.linalg.norm(x, axis=1)
    if norms.size and np.abs(norms - 1).max() > NORM_TOLERANCE:
        raise ValueError("embeddings must be L2-normalised (inner product is used as cosine); "
                         f"found norms in [{norms.min():.4f}, {norms.max():.4f}]")


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return None


def build_index(
    embeddings: np.ndarray,
    ids: np.ndarray,
    plan: IndexPlan,
    seed: int = 0,
    use_gpu: bool | None = None,
    progress: bool = False,
    recall_target: float | None = 0.95,
) -> faiss.Index:
    """Train on a seeded sample, add every row under its int64 id, tune nprobe; returns a CPU index.

    ``embeddings`` may be float16 (as stored): rows are converted to float32 one batch at a time.
    ``use_gpu=None`` trains and adds IVF indexes on all GPUs when faiss sees any. nprobe is raised
    from 1 until recall@10 on held-out sample queries reaches ``recall_target``, stops improving
    (PQ codes cap it) or ``plan.max_nprobe`` is hit; ``recall_target=None`` keeps ``plan.nprobe``.
    """
    if embeddings.ndim != 2 or embeddings.shape[1] != plan.dim:
        raise ValueError(f"embeddings must be (n, {plan.dim}), got {embeddings.shape}")
    ids = np.asarray(ids)
    n = embeddings.shape[0]
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be {n} integers, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if n and (ids.min() < 0 or np.unique(ids).size != n):
        raise ValueError("ids must be unique and >= 0 (-1 marks a missing result)")
    if n < plan.train_size:
        raise ValueError(f"plan {plan.factory!r} trains on {plan.train_size:,} rows, got {n:,}")
    if use_gpu is None:
        use_gpu = faiss.get_num_gpus() > 0
    elif use_gpu and faiss.get_num_gpus() == 0:
        raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")

    index = faiss.index_factory(plan.dim, plan.factory, plan.metric)
    ivf = _ivf(index)
    if ivf is not None:
        ivf.verbose = progress
        ivf.nprobe = plan.nprobe
    work = faiss.index_cpu_to_all_gpus(index) if use_gpu and ivf is not None else index
    if plan.train_size:
        sample = _float32(embeddings[np.sort(_sample_order(n, seed)[: plan.train_size])])
        _check_normalised(sample)
        log.info("training %s on %d rows%s", plan.factory, len(sample), " on GPU" if work is not index else "")
        work.train(sample)
        del sample
    for start in tqdm(range(0, n, ADD_BATCH), unit="batch", desc="add", disable=not progress):
        batch = _float32(embeddings[start : start + ADD_BATCH])
        _check_normalised(batch)
        work.add_with_ids(batch, ids[start : start + ADD_BATCH])
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
        ivf = _ivf(index)

    if ivf is not None and recall_target is not None:
        queries = min(RECALL_QUERIES, n - plan.train_size)
        truth = _ground_truth(embeddings, ids, 10, queries, seed)
        best_nprobe, recall = 0, -1.0
        for nprobe in _nprobe_steps(plan.max_nprobe):
            ivf.nprobe = nprobe
            measured = _recall(index, truth, 10)
            if measured - recall < PLATEAU_GAIN:  # codes, not probes, limit recall: more probes only cost time
                break
            best_nprobe, recall = nprobe, measured
            if recall >= recall_target:
                break
        ivf.nprobe = best_nprobe
        log.info("%s: nprobe=%d gives recall@10 %.4f on %d held-out queries (target %.2f)",
                 plan.factory, ivf.nprobe, recall, queries, recall_target)
    return index


def _nprobe_steps(cap: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to and including ``cap``."""
    steps = sorted({s for p in range(int(math.log2(cap)) + 1) for s in (2**p, 3 * 2**p // 2) if s < cap})
    return [*steps, cap]


@dataclass(frozen=True)
class _Truth:
    queries: np.ndarray  # float32 (q, dim)
    query_ids: np.ndarray  # (q,)
    neighbours: np.ndarray  # (q, k+1) exact top ids, the query's own id included


def _ground_truth(embeddings: np.ndarray, ids: np.ndarray, k: int, queries: int, seed: int) -> _Truth:
    """Exact inner-product top-(k+1) of the held-out queries, one block of the data at a time."""
    n = embeddings.shape[0]
    rows = np.sort(_sample_order(n, seed)[n - min(queries, n) :])
    xq = _float32(embeddings[rows])
    heap = faiss.ResultHeap(len(xq), min(k + 1, n), keep_max=True)
    for start in range(0, n, ADD_BATCH):
        block = _float32(embeddings[start : start + ADD_BATCH])
        scores, positions = faiss.knn(xq, block, min(k + 1, len(block)), faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(positions >= 0, positions + start, -1))
    heap.finalize()
    return _Truth(xq, ids[rows], np.where(heap.I >= 0, ids[heap.I], -1))


def _without_self(found: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own (-1 padded)."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for row, (neighbours, own) in enumerate(zip(found, query_ids)):
        kept = neighbours[neighbours != own][:k]
        out[row, : len(kept)] = kept
    return out


def _recall(index: faiss.Index, truth: _Truth, k: int) -> float:
    _, found = search(index, truth.queries, k + 1)
    approx = _without_self(found, truth.query_ids, k)
    exact = _without_self(truth.neighbours, truth.query_ids, k)
    hits = ((approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(axis=2).sum(axis=1)
    wanted = (exact >= 0).sum(axis=1)
    return float(np.mean(np.where(wanted > 0, hits / np.maximum(wanted, 1), 1.0)))  # nothing to find: full recall


def measure_recall(
    index: faiss.Index, embeddings: np.ndarray, ids: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0
) -> float:
    """Mean recall@k of ``index`` against exact inner-product search, on ``queries`` rows of the data.

    ``embeddings``/``ids`` must be exactly what the index holds. The queries are the tail of the
    seeded permutation whose head trained the quantizer (pass ``build_index``'s seed), so they are
    held out of training; each query's own id is ignored on both sides. Exact search is faiss's
    brute-force inner product (what ``IndexFlatIP`` runs), done in blocks so float16 input is fine.
    """
    ids = np.asarray(ids, dtype=np.int64)
    return _recall(index, _ground_truth(embeddings, ids, k, queries, seed), k)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query; a missing result has id -1 and score -inf."""
    scores, found = index.search(_float32(np.atleast_2d(queries)), k)
    scores[found < 0] = -np.inf
    return scores, found


def _removal_supported(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` removes by stored id (a bare flat or HNSW index cannot)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _removal_supported(index.index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)
    return isinstance(index, faiss.IndexIVF)


def remove_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove the vectors stored under ``ids`` (absent ids are ignored); returns how many were removed."""
    if not _removal_supported(index):
        raise ValueError(f"{type(faiss.downcast_index(index)).__name__} cannot remove vectors by id; "
                         "build it with build_index (IDMap2 or IVF)")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    return int(index.remove_ids(faiss.IDSelectorBatch(ids))) if ids.size else 0


def save_index(directory: Path, index: faiss.Index, manifest: dict) -> None:
    """Write ``index.faiss`` and ``manifest.json`` into ``directory``, each replaced atomically.

    The stored manifest gains a ``faiss_index`` entry (file size, row count, dim, nprobe) that
    ``load_index`` checks, so a reader never pairs an index file with another save's manifest.
    """
    if MANIFEST_INDEX_KEY in manifest:
        raise ValueError(f"manifest key {MANIFEST_INDEX_KEY!r} is reserved for save_index")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_tmp = directory / f".{INDEX_FILE}.tmp-{os.getpid()}"
    manifest_tmp = directory / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    try:
        faiss.write_index(index, str(index_tmp))
        ivf = _ivf(index)
        stored = {**manifest, MANIFEST_INDEX_KEY: {
            "file_bytes": index_tmp.stat().st_size, "ntotal": int(index.ntotal), "dim": int(index.d),
            "nprobe": int(ivf.nprobe) if ivf is not None else None}}
        manifest_tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
        for tmp in (index_tmp, manifest_tmp):
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(index_tmp, directory / INDEX_FILE)
        os.replace(manifest_tmp, directory / MANIFEST_FILE)
    finally:
        index_tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)


def update_manifest(directory: Path, **entries) -> None:
    """Change manifest entries of a saved index whose index file stays as it is (atomically)."""
    path = Path(directory) / MANIFEST_FILE
    manifest = {**json.loads(path.read_text()), **entries}
    tmp = path.with_name(f".{MANIFEST_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def load_index(directory: Path) -> tuple[faiss.Index, dict]:
    """Read what ``save_index`` wrote; raises ``IndexLoadError`` naming the path if it is unusable."""
    directory = Path(directory)
    index_path, manifest_path = directory / INDEX_FILE, directory / MANIFEST_FILE
    for path in (index_path, manifest_path):
        if not path.is_file():
            raise IndexLoadError(f"no kNN index at {directory}: {path.name} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest[MANIFEST_INDEX_KEY]
        file_bytes, ntotal, dim = int(expected["file_bytes"]), int(expected["ntotal"]), int(expected["dim"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexLoadError(f"corrupt kNN index manifest {manifest_path}: {type(exc).__name__}: {exc}") from None
    size = index_path.stat().st_size
    if size != file_bytes:
        raise IndexLoadError(f"kNN index {index_path} is {size:,} bytes, its manifest says {file_bytes:,} "
                             "(torn or mixed save)")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-200:]
        raise IndexLoadError(f"corrupt kNN index {index_path}: {reason}") from None
    if (index.ntotal, index.d) != (ntotal, dim):
        raise IndexLoadError(f"kNN index {index_path} holds {index.ntotal:,} x {index.d}, "
                             f"its manifest says {ntotal:,} x {dim}")
    return index, manifest
