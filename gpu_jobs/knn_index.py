"""A faiss kNN index over L2-normalised CLIP embeddings (inner product = cosine similarity).

The index type is chosen like autofaiss does, from the row count and a memory budget: exact search
while that is cheap, then IVF (inverted lists over k-means cells) with full vectors, then IVF with
product-quantised codes when full vectors do not fit, then IVF with its inverted lists on disk
(an ``.ivfdata`` file beside the index, memory-mapped). Every type this module builds supports
removal by id, so opted-out uids can be dropped without a rebuild: flat storage is wrapped in
``IDMap2`` (a bare flat index would renumber the rows after a removal) and HNSW is never the
top-level structure (it cannot remove).

An index can be built in pieces: ``trained_index`` once, ``add_rows`` into copies of it on many
processes (shards), ``merge_shards`` into one, ``tune_nprobe`` against an ``ExactTop`` merged from
the same pieces. ``build_index`` does all of it in one process.

Sampling (``sample_rows``): seeded draws of row positions give the quantizer's training rows and
the recall queries, held out from training whenever ``train_size + queries <= n``. The queries
are still stored in the index, which is how the index is used on its own data (kNN of every
image); recall ignores the query's own id so that finding itself does not count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from faiss.contrib.inspect_tools import get_invlist
from faiss.contrib.ondisk import merge_ondisk
from tqdm import tqdm

from infra import lake_layout
from infra.delta_store import Lake
from infra.lake_storage import Folder

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
TEXT_INDEX_FILE = "text.faiss"
# Per faiss id, in id order: its uid and the pair's metadata (below). Each save writes its own
# file (``new_metadata_name``, named in the manifest): a reader never pairs one save's ids with
# another's rows, and a rebuild numbers the ids anew.
METADATA_MANIFEST_KEY = "metadata_file"
_LEGACY_UIDS = "uids.parquet"  # what indexes saved before metadata files held: uids by id
# What a search result shows of a pair (clip-retrieval's metadata columns and the tags its
# filters use); images and lineage are looked up in the lake by uid and warc_file.
METADATA_SCHEMA = pa.schema([
    ("id", pa.int64()), ("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
    ("warc_file", pa.string()), ("language", pa.string()), ("caption_similarity", pa.float32()),
    ("width", pa.int32()), ("height", pa.int32()), ("punsafe", pa.float32()), ("pwatermark", pa.float32()),
    ("aesthetic", pa.float32()), ("pviolence", pa.float32()),
])
MANIFEST_FILE = "manifest.json"
MANIFEST_INDEX_KEY = "faiss_index"  # added by save_index: what the index file must match
TEXT_MANIFEST_KEY = "faiss_text_index"
# A folder holds the index of the pairs' image embeddings and, when built, one of their caption
# embeddings under the same ids (clip-retrieval's "Search over text"): modality -> (file, the
# manifest entry save_index adds for it). One manifest names both, so they are one save.
MODALITIES = {"image": (INDEX_FILE, MANIFEST_INDEX_KEY), "text": (TEXT_INDEX_FILE, TEXT_MANIFEST_KEY)}
LISTS_SUFFIX = ".ivfdata"
# Indexes loaded from a bucket, as local files (faiss reads and memory-maps local files only), and
# local copies of indexes' metadata; one entry per index folder. PAIRLAKE_INDEX_CACHE moves it
# (the tests give each run its own, whose folders do not outlive the run).
CACHE_DIR = Path(os.environ.get("PAIRLAKE_INDEX_CACHE") or Path(tempfile.gettempdir()) / "pairlake-index-cache")


def index_folder(lake: Lake, variant: str) -> Folder:
    """Where a variant's index lives in the lake (a local folder or a prefix in a bucket)."""
    return lake.folder(lake_layout.index(variant))


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
    on_disk: bool = False  # inverted lists in an .ivfdata file beside the index, memory-mapped


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
    ``IVF{nlist},PQ{m}np`` with the largest code size that fits, else ``IVF{nlist},Flat`` with its
    inverted lists on disk (memory holds the centroids; searches read the probed lists). The budget
    covers the built index, not the caller's copy of the embeddings during the build. No OPQ rotation and no polysemous
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
    if centroid_bytes > memory_budget_bytes:
        raise ValueError(f"no index for {n:,} x {dim} fits {budget}: even its {nlist} centroids need "
                         f"{_mb(centroid_bytes)}")
    return IndexPlan(f"IVF{nlist},Flat", dim, metric, nlist, nprobe, max_nprobe, train_size, centroid_bytes,
                     f"{n:,} rows: full vectors need {_mb(ivf_flat_bytes)} and PQ codes more than {budget}: "
                     f"IVF over {nlist} cells with the lists on disk ({_mb(n * (vector_bytes + 8))} in "
                     f"an .ivfdata file), {_mb(centroid_bytes)} of centroids in memory", on_disk=True)


def sample_rows(n: int, train_size: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, recall query rows), each sorted and seeded. The queries are one draw (the
    same whatever ``train_size``, so ``measure_recall`` finds them again); the training rows another,
    held out from the queries whenever train_size + queries <= n. Memory follows the samples, not
    ``n``, when they are small beside it."""
    query_rows = np.sort(np.random.default_rng(seed).choice(n, min(queries, n), replace=False))
    drawn = np.random.default_rng(seed + 1).choice(n, min(n, train_size + len(query_rows)), replace=False)
    if train_size + len(query_rows) <= n:
        drawn = drawn[~np.isin(drawn, query_rows)]
    return np.sort(drawn[:train_size]), query_rows


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


def _check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be {n} integers, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if n and (ids.min() < 0 or np.unique(ids).size != n):
        raise ValueError("ids must be unique and >= 0 (-1 marks a missing result)")
    return ids


def trained_index(plan: IndexPlan, sample: np.ndarray, use_gpu: bool | None = None,
                  progress: bool = False) -> faiss.Index:
    """An empty index of ``plan``, its quantizer trained on ``sample`` (ignored for exact search).

    ``use_gpu=None`` trains IVF quantizers on all GPUs when faiss sees any."""
    if use_gpu is None:
        use_gpu = faiss.get_num_gpus() > 0
    elif use_gpu and faiss.get_num_gpus() == 0:
        raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
    index = faiss.index_factory(plan.dim, plan.factory, plan.metric)
    ivf = _ivf(index)
    if ivf is None:
        return index
    ivf.verbose = progress
    ivf.nprobe = plan.nprobe
    if len(sample) < plan.train_size:
        raise ValueError(f"plan {plan.factory!r} trains on {plan.train_size:,} rows, got {len(sample):,}")
    sample = _float32(sample)
    _check_normalised(sample)
    log.info("training %s on %d rows%s", plan.factory, len(sample), " on GPU" if use_gpu else "")
    work = faiss.index_cpu_to_all_gpus(index) if use_gpu else index
    work.train(sample)
    return faiss.index_gpu_to_cpu(work) if use_gpu else index


def add_rows(index: faiss.Index, embeddings: np.ndarray, ids: np.ndarray, progress: bool = False) -> None:
    """Add rows under their int64 ids, one float32 batch at a time (``embeddings`` may be float16)."""
    ids = _check_ids(ids, len(embeddings))
    for start in tqdm(range(0, len(embeddings), ADD_BATCH), unit="batch", desc="add", disable=not progress):
        batch = _float32(embeddings[start : start + ADD_BATCH])
        _check_normalised(batch)
        index.add_with_ids(batch, ids[start : start + ADD_BATCH])


@dataclass(frozen=True)
class Truth:
    """Exact top ids of the recall queries, as ``measure_recall`` compares them."""

    queries: np.ndarray  # float32 (q, dim)
    query_ids: np.ndarray  # (q,)
    neighbours: np.ndarray  # (q, k+1) exact top ids, the query's own id included


class ExactTop:
    """Exact inner-product top-``k`` of fixed queries, fed the data one block at a time (on any
    process: tops of disjoint blocks merge with ``merge``)."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = _float32(queries), k
        self._heap = faiss.ResultHeap(len(self.queries), k, keep_max=True)

    def add_block(self, block: np.ndarray, block_ids: np.ndarray) -> None:
        if len(block) == 0:
            return
        scores, positions = faiss.knn(self.queries, _float32(block), min(self.k, len(block)), faiss.METRIC_INNER_PRODUCT)
        self.merge(scores, np.where(positions >= 0, np.asarray(block_ids, np.int64)[positions], -1))

    def merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Add another top (scores, ids), each (queries, <= k), as ``result`` gives it."""
        if scores.shape[1] < self.k:  # fewer rows than k in that block: pad with "no result"
            pad = self.k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        self._heap.add_result(np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(ids, np.int64))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) so far, best first; a copy, so more blocks may follow."""
        heap = faiss.ResultHeap(len(self.queries), self.k, keep_max=True)
        heap.add_result(self._heap.D.copy(), self._heap.I.copy())
        heap.finalize()
        return heap.D, heap.I


def _ground_truth(embeddings: np.ndarray, ids: np.ndarray, k: int, query_rows: np.ndarray) -> Truth:
    """Exact inner-product top-(k+1) of the query rows, one block of the data at a time."""
    top = ExactTop(embeddings[query_rows], min(k + 1, len(embeddings)))
    for start in range(0, len(embeddings), ADD_BATCH):
        top.add_block(embeddings[start : start + ADD_BATCH], ids[start : start + ADD_BATCH])
    return Truth(top.queries, ids[query_rows], top.result()[1])


def tune_nprobe(index: faiss.Index, plan: IndexPlan, truth: Truth, recall_target: float | None) -> float:
    """Set nprobe to the smallest step reaching ``recall_target`` recall@10 (or where recall stops
    improving: PQ codes cap it, or ``plan.max_nprobe``); ``None`` keeps ``plan.nprobe``. Returns
    recall@10 at the nprobe set."""
    ivf = _ivf(index)
    if ivf is None or recall_target is None:
        return _recall(index, truth, 10)
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
             plan.factory, ivf.nprobe, recall, len(truth.queries), recall_target)
    return recall


def build_index(
    embeddings: np.ndarray,
    ids: np.ndarray,
    plan: IndexPlan,
    seed: int = 0,
    use_gpu: bool | None = None,
    progress: bool = False,
    recall_target: float | None = 0.95,
) -> faiss.Index:
    """Train on a seeded sample, add every row under its int64 id, tune nprobe; returns a CPU index,
    all in this process (``spark_jobs.knn_index_job`` builds the same index from a table).

    ``embeddings`` may be float16 (as stored): rows are converted to float32 one batch at a time.
    nprobe is raised from 1 until recall@10 on held-out sample queries reaches ``recall_target``,
    stops improving (PQ codes cap it) or ``plan.max_nprobe`` is hit; ``recall_target=None`` keeps
    ``plan.nprobe``. An on-disk plan is built in memory here.
    """
    if embeddings.ndim != 2 or embeddings.shape[1] != plan.dim:
        raise ValueError(f"embeddings must be (n, {plan.dim}), got {embeddings.shape}")
    n = embeddings.shape[0]
    ids = _check_ids(ids, n)
    train_rows, query_rows = sample_rows(n, plan.train_size, RECALL_QUERIES, seed)
    index = trained_index(plan, embeddings[train_rows], use_gpu, progress)
    add_rows(index, embeddings, ids, progress)
    if _ivf(index) is not None and recall_target is not None:
        tune_nprobe(index, plan, _ground_truth(embeddings, ids, 10, query_rows), recall_target)
    return index


def _nprobe_steps(cap: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to and including ``cap``."""
    steps = sorted({s for p in range(int(math.log2(cap)) + 1) for s in (2**p, 3 * 2**p // 2) if s < cap})
    return [*steps, cap]


def _without_self(found: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own (-1 padded)."""
    out = np.full((len(found), k), -1, dtype=np.int64)
    for row, (neighbours, own) in enumerate(zip(found, query_ids)):
        kept = neighbours[neighbours != own][:k]
        out[row, : len(kept)] = kept
    return out


def _recall(index: faiss.Index, truth: Truth, k: int) -> float:
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

    ``embeddings``/``ids`` must be exactly what the index holds. The queries are those
    ``build_index`` held out of training with the same seed; each query's own id is ignored on both sides. Exact search is faiss's brute-force
    inner product (what ``IndexFlatIP`` runs), done in blocks so float16 input is fine.
    """
    ids = np.asarray(ids, dtype=np.int64)
    query_rows = sample_rows(len(ids), 0, queries, seed)[1]
    return _recall(index, _ground_truth(embeddings, ids, k, query_rows), k)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query; a missing result has id -1 and score -inf."""
    scores, found = index.search(_float32(np.atleast_2d(queries)), k)
    scores[found < 0] = -np.inf
    return scores, found


def merge_shards(trained: faiss.Index, shard_files: Sequence[Path], lists_file: Path | None = None) -> faiss.Index:
    """One index holding every shard's rows, in shard order (``add_rows`` into copies of
    ``trained``, saved with ``faiss.write_index``). With ``lists_file`` the inverted lists are
    merged into that file on disk, the shards memory-mapped, never loaded; otherwise one shard
    at a time is loaded and moved into the in-memory index."""
    # A copy as read_index makes it (clone_index keeps generic flat types that shards, read back,
    # would not merge into).
    index = faiss.deserialize_index(faiss.serialize_index(trained))
    if index.ntotal:
        raise ValueError("merge_shards merges into an empty trained index")
    if lists_file is not None:
        if _ivf(index) is None:
            raise ValueError("only an IVF index keeps its lists on disk")
        merge_ondisk(index, [str(path) for path in shard_files], str(lists_file))
        with open(lists_file, "rb") as handle:
            os.fsync(handle.fileno())
        return index
    for path in shard_files:
        index.merge_from(faiss.read_index(str(path)), 0)
    return index


def lists_file_of(index: faiss.Index) -> Path | None:
    """The .ivfdata file holding an on-disk index's lists; None for an in-memory index."""
    ivf = _ivf(index)
    if ivf is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return Path(lists.filename) if isinstance(lists, faiss.OnDiskInvertedLists) else None


def _remove_from_disk(index: faiss.Index, ids: np.ndarray, lists_file: Path) -> int:
    """Copy the lists without ``ids`` into a new ``lists_file``: entries removed in place would
    leave their bytes in the old file, so the old file is dropped whole once this index is saved."""
    ivf = _ivf(index)
    old = ivf.invlists
    new = faiss.OnDiskInvertedLists(ivf.nlist, old.code_size, str(lists_file))
    removed = 0
    for cell in range(ivf.nlist):
        cell_ids, codes = get_invlist(old, cell)
        keep = ~np.isin(cell_ids, ids)
        removed += int((~keep).sum())
        if keep.any():
            kept_ids, kept_codes = np.ascontiguousarray(cell_ids[keep]), np.ascontiguousarray(codes[keep])
            new.add_entries(cell, len(kept_ids), faiss.swig_ptr(kept_ids), faiss.swig_ptr(kept_codes))
    ivf.replace_invlists(new, True)
    new.this.disown()
    ivf.ntotal = index.ntotal = ivf.ntotal - removed
    with open(lists_file, "rb") as handle:
        os.fsync(handle.fileno())
    return removed


def _removal_supported(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` removes by stored id (a bare flat or HNSW index cannot)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _removal_supported(index.index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)
    return isinstance(index, faiss.IndexIVF)


def remove_ids(index: faiss.Index, ids: np.ndarray, new_lists_file: Path | None = None) -> int:
    """Remove the vectors stored under ``ids`` (absent ids are ignored); returns how many were removed.

    An index with its lists on disk is rewritten into ``new_lists_file`` (required for it): save
    the index, then delete the old lists file, and no byte of a removed vector is left."""
    if not _removal_supported(index):
        raise ValueError(f"{type(faiss.downcast_index(index)).__name__} cannot remove vectors by id; "
                         "build it with build_index (IDMap2 or IVF)")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if lists_file_of(index) is not None:
        if new_lists_file is None:
            raise ValueError("this index keeps its lists on disk: name the new lists file")
        return _remove_from_disk(index, ids, new_lists_file)
    return int(index.remove_ids(faiss.IDSelectorBatch(ids))) if ids.size else 0


@contextlib.contextmanager
def new_lists_file(folder: Folder) -> Iterator[Path]:
    """A fresh local path for the lists file of an on-disk index that ``save_index`` will publish
    into ``folder`` (a name no save used). In a local folder it is the file's final place: the
    index memory-maps it there, and it is deleted only if the block fails. For a folder in a bucket
    it is in a local temporary folder, gone when the block ends (``save_index`` uploads it)."""
    name = f"lists-{uuid.uuid4().hex[:12]}{LISTS_SUFFIX}"
    if not folder.is_local:
        with tempfile.TemporaryDirectory(prefix="pairlake-knn-lists-") as local:
            yield Path(local) / name
        return
    folder.create()
    path = folder.local_path / name
    try:
        yield path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def new_metadata_name() -> str:
    """A name no save used for the metadata file that the next ``save_index`` will name."""
    return f"metadata-{uuid.uuid4().hex[:12]}.parquet"


def metadata_name(folder: Folder) -> str | None:
    """The metadata file that the folder's manifest names (None for a save that has none)."""
    return json.loads(folder.read_bytes(MANIFEST_FILE)).get(METADATA_MANIFEST_KEY)


def metadata_cache(folder: Folder) -> Path:
    """This machine's folder for local copies of ``folder``'s metadata (``gpu_jobs.retrieval``)."""
    return CACHE_DIR / "metadata" / _digest(folder.path)


def save_index(folder: Folder, index: faiss.Index, manifest: dict, text_index: faiss.Index | None = None) -> None:
    """Write ``index.faiss`` (and ``text.faiss``: ``text_index``, the same ids over caption
    embeddings) and ``manifest.json`` into ``folder``, each published whole, the manifest last.

    The stored manifest gains an entry per index (``faiss_index``, ``faiss_text_index``: file
    size, row count, dim, nprobe, the lists file of an on-disk index with its size, and an id of
    this save) that ``load_index`` checks, so a reader never pairs an index file with another
    save's manifest. An on-disk index's lists file (from ``new_lists_file``: a name no earlier
    save used) must already be in a local ``folder``; into a bucket it is uploaded first. Other
    lists files there, a text index this save does not name, and this machine's cached copies of
    the folder's older saves (``load_index``), are deleted once the new index is in place.
    The manifest's ``metadata_file`` (from ``new_metadata_name``), when given, must already be
    published; other metadata files are deleted then too.
    """
    for _, key in MODALITIES.values():
        if key in manifest:
            raise ValueError(f"manifest key {key!r} is reserved for save_index")
    save_id = uuid.uuid4().hex  # names this save's files in caches of a bucket's index
    stored, kept_lists = dict(manifest), set()
    for modality, saved in (("image", index), ("text", text_index)):
        if saved is None:
            continue
        file_name, key = MODALITIES[modality]
        lists = lists_file_of(saved)
        if lists is not None and folder.is_local and lists.parent.resolve() != folder.local_path.resolve():
            raise ValueError(f"the index's lists file {lists} is not in {folder.path}")
        if lists is not None and not folder.is_local:
            with open(lists, "rb") as source, folder.publish(lists.name) as target:
                shutil.copyfileobj(source, target, 1 << 20)
        with folder.publish(file_name) as handle:
            faiss.write_index(saved, faiss.PyCallbackIOWriter(handle.write))
            file_bytes = handle.tell()
        ivf = _ivf(saved)
        stored[key] = {
            "file_bytes": file_bytes, "ntotal": int(saved.ntotal), "dim": int(saved.d),
            "nprobe": int(ivf.nprobe) if ivf is not None else None,
            "lists_file": lists.name if lists is not None else None,
            "lists_bytes": lists.stat().st_size if lists is not None else None,
            "save_id": save_id}
        if lists is not None:
            kept_lists.add(lists.name)
    _write_manifest(folder, stored)  # last: it names what the index files must match
    if text_index is None and folder.exists(TEXT_INDEX_FILE):
        folder.delete(TEXT_INDEX_FILE)  # an earlier save's caption vectors, removed pairs' among them
    for stale in folder.names(f"*{LISTS_SUFFIX}"):
        if stale not in kept_lists:
            folder.delete(stale)
    for stale in folder.names("metadata-*.parquet") + folder.names(_LEGACY_UIDS):
        if stale != manifest.get(METADATA_MANIFEST_KEY):
            folder.delete(stale)
    # This machine's copies of older saves: a removal's vectors and metadata leave them too.
    shutil.rmtree(metadata_cache(folder), ignore_errors=True)
    if not folder.is_local:
        shutil.rmtree(CACHE_DIR / _digest(folder.path), ignore_errors=True)


def update_manifest(folder: Folder, **entries) -> None:
    """Change manifest entries of a saved index whose index file stays as it is (atomically)."""
    _write_manifest(folder, {**json.loads(folder.read_bytes(MANIFEST_FILE)), **entries})


def _write_manifest(folder: Folder, manifest: dict) -> None:
    folder.write_bytes(MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode())


def load_index(folder: Folder, modality: str = "image") -> tuple[faiss.Index, dict]:
    """Read what ``save_index`` wrote: the index of ``modality`` ("image" or "text") and the
    manifest; raises ``IndexLoadError`` naming the location if it is unusable."""
    for name in (INDEX_FILE, MANIFEST_FILE):
        if not folder.exists(name):
            raise IndexLoadError(f"no kNN index at {folder.path}: {name} is missing")
    try:
        manifest = json.loads(folder.read_bytes(MANIFEST_FILE))
    except ValueError as exc:
        raise IndexLoadError(f"corrupt kNN index manifest {folder.file(MANIFEST_FILE)}: {exc}") from None
    return saved_index(folder, manifest, modality), manifest


def has_index(manifest: dict, modality: str) -> bool:
    """Whether the save ``manifest`` describes holds an index of ``modality``."""
    return MODALITIES[modality][1] in manifest


def saved_index(folder: Folder, manifest: dict, modality: str) -> faiss.Index:
    """The index of ``modality`` in the save that ``manifest`` (as ``load_index`` returned it)
    describes; ``IndexLoadError`` if the files in ``folder`` are not that save's.

    A local folder is read in place (an on-disk index's lists memory-mapped there); an index in a
    bucket is read from a local copy of its files (``_cached_copy``)."""
    file_name, key = MODALITIES[modality]
    if key not in manifest and modality == "text":
        raise IndexLoadError(f"the kNN index at {folder.path} holds no {modality} index "
                             f"(built with index.text_index off, or by an older pairlake): materialize knn_index again")
    try:
        expected = manifest[key]
        ntotal, dim = int(expected["ntotal"]), int(expected["dim"])
        int(expected["file_bytes"])  # a number, as _check_sizes compares it
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexLoadError(f"corrupt kNN index manifest {folder.file(MANIFEST_FILE)}: "
                             f"{type(exc).__name__}: {exc}") from None
    if folder.is_local:
        directory = folder.local_path
        _check_sizes(directory, file_name, expected, folder)
    else:
        directory = _cached_copy(folder, modality, expected)
    index_file = folder.file(file_name)
    try:
        # An on-disk index names its lists file: read it from this directory, wherever the lake moved.
        index = faiss.read_index(str(directory / file_name), faiss.IO_FLAG_ONDISK_SAME_DIR)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[-200:]
        raise IndexLoadError(f"corrupt kNN index {index_file}: {reason}") from None
    if (index.ntotal, index.d) != (ntotal, dim):
        raise IndexLoadError(f"kNN index {index_file} holds {index.ntotal:,} x {index.d}, "
                             f"its manifest says {ntotal:,} x {dim}")
    return index


def _check_sizes(directory: Path, file_name: str, expected: dict, folder: Folder) -> None:
    """The index file ``file_name`` (and its lists file) in the local ``directory`` have the sizes
    the manifest entry ``expected`` names; errors name them in ``folder``, where they were published."""
    index_path, file_bytes = directory / file_name, int(expected["file_bytes"])
    size = index_path.stat().st_size if index_path.is_file() else 0  # gone from a bucket since listed
    if size != file_bytes:
        raise IndexLoadError(f"kNN index {folder.file(file_name)} is {size:,} bytes, its manifest says "
                             f"{file_bytes:,} (torn or mixed save)")
    lists_name = expected.get("lists_file")
    if lists_name is not None:
        lists_path = directory / lists_name
        if not lists_path.is_file() or lists_path.stat().st_size != expected.get("lists_bytes"):
            raise IndexLoadError(f"kNN index {folder.file(file_name)}: its lists file {lists_name} is missing or "
                                 "not the size its manifest says")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cached_copy(folder: Folder, modality: str, expected: dict) -> Path:
    """The files of ``folder``'s ``modality`` index (in a bucket) as a local folder, downloaded
    once per save: ``CACHE_DIR/<folder>/<modality>-<save>/``, the save being its manifest entry
    ``expected``. A download is renamed into place only once its sizes match that entry, so an
    entry in the cache is whole. Older saves of that index are then deleted: a process still
    searching one keeps its memory-mapped lists (an unlinked file lives on while it is mapped)."""
    file_name = MODALITIES[modality][0]
    saves = CACHE_DIR / _digest(folder.path)
    entry = saves / f"{modality}-{_digest(json.dumps(expected, sort_keys=True))}"
    if entry.is_dir():
        return entry
    saves.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix=".download-", dir=saves))  # dot: not a save to clean up
    try:
        for name in filter(None, (file_name, expected.get("lists_file"))):
            if folder.exists(name):  # a missing one is named by _check_sizes
                pafs.copy_files(folder.file(name), str(download / name), source_filesystem=folder.fs,
                                destination_filesystem=pafs.LocalFileSystem())
        _check_sizes(download, file_name, expected, folder)
        try:
            download.rename(entry)
        except OSError:
            if not entry.is_dir():
                raise  # else another process cached this save first
    finally:
        shutil.rmtree(download, ignore_errors=True)
    for older in saves.glob(f"{modality}-*"):
        if older != entry:
            shutil.rmtree(older, ignore_errors=True)
    return entry
