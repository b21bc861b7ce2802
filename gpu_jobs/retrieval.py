"""kNN search over the lake's indexes: queries, clip-retrieval's result filters, and removals.

An index (built by ``spark_jobs.knn_index_job``) lives in ``<lake>/indexes/<variant>/``, a local
folder or a prefix in a bucket: ``index.faiss`` over the image embeddings, ``text.faiss`` over the
caption embeddings under the same ids (unless ``index.text_index`` is off) and ``manifest.json``
(``gpu_jobs.knn_index``), the ``.ivfdata`` lists files of an on-disk index, and the save's
``metadata-*.parquet``: per faiss id, in id order, the pair's uid, url, caption and tags. The manifest names the curated Delta version and CLIP model
it was built from and the recall@10 measured at build time.

A searcher loads an index once and its metadata as a local, memory-mapped Arrow file (the page
cache holds what queries touch, not the process), and loads both again when the manifest names
another save: a removal rewrites the index, so a removed pair is never returned once the removal
has published it.
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from gpu_jobs import knn_index as knn
from gpu_jobs.clip_model import ClipModelError, LoadedClip, load_clip, model_identity
from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs.knn_index import METADATA_MANIFEST_KEY, METADATA_SCHEMA, index_folder
from infra import lake_layout
from infra.config import ClipConfig, DownloadConfig, InputError
from infra.delta_store import Lake
from infra.lake_storage import Folder
from infra.tables import CLIP_SCORES
from spark_jobs.download.resizer import resize_image

# clip-retrieval's filters: results this close to a better-ranked one are (near) duplicates (the
# service passes curation.near_duplicate_threshold, 0.94 unless configured), and a tag above 0.5
# marks a result unsafe or violent.
DUPLICATE_COSINE = 0.94
TAG_THRESHOLD = 0.5


class SearchError(InputError):
    """A query this index cannot answer (bad vector, filter without its tag, ...): one line."""


@dataclass(frozen=True)
class SearchOptions:
    """One query's options, as clip-retrieval's back end takes them."""

    num_result_ids: int  # nearest neighbours searched (and the most results returned)
    num_images: int  # the first results that carry metadata; the rest carry id and similarity
    deduplicate: bool = False
    use_safety_model: bool = False  # hide results whose punsafe tag is above 0.5 (or unknown)
    use_violence_detector: bool = False  # hide results whose pviolence tag is above 0.5 (or unknown)
    aesthetic_score: int | None = None  # 0-9: rank results whose aesthetic tag is near this level first
    aesthetic_weight: float = 0.5
    duplicate_cosine: float = DUPLICATE_COSINE  # deduplicate: at least this close to a better result

    @property
    def filter_tags(self) -> tuple[str, ...]:
        """The tags whose values above TAG_THRESHOLD (or missing) hide a result."""
        return tuple(tag for wanted, tag in ((self.use_safety_model, "punsafe"),
                                             (self.use_violence_detector, "pviolence")) if wanted)


@dataclass(frozen=True)
class Result:
    id: int
    similarity: float
    metadata: dict | None  # the metadata.parquet row, or None past num_images


class LoadedIndex:
    """One saved index and its metadata, as they were when loaded (searched by many threads)."""

    def __init__(self, folder: Folder) -> None:
        self.index, self.manifest = knn.load_index(folder)
        self.save_id = self.manifest[knn.MANIFEST_INDEX_KEY]["save_id"]
        self.text_index = knn.saved_index(folder, self.manifest, "text") if knn.has_index(self.manifest, "text") else None
        if METADATA_MANIFEST_KEY not in self.manifest:
            raise knn.IndexLoadError(f"the kNN index at {folder.path} was saved without search metadata (before "
                                     "pairlake's search service): materialize knn_index again")
        self.metadata = _mapped_metadata(folder, self.manifest[METADATA_MANIFEST_KEY], self.save_id)
        # Ids are sorted (written in id order): each record batch's id column is a zero-copy view
        # of the mapped file, found by its first id; nothing of the size of the index is copied.
        self._id_chunks = [chunk.to_numpy(zero_copy_only=True) for chunk in self.metadata["id"].chunks if len(chunk)]
        self._chunk_firsts = np.array([chunk[0] for chunk in self._id_chunks], np.int64)
        self._chunk_starts = np.cumsum([0] + [len(chunk) for chunk in self._id_chunks])[:-1]
        # The tags the filters read for every candidate result, in memory (NaN: untagged): 4 bytes a
        # row per tag, next to the index's 2 KB per vector; whole rows are read only for results
        # returned with their metadata.
        self._tags = {name: pc.fill_null(self.metadata[name], float("nan")).to_numpy().astype(np.float32)
                      for name in ("punsafe", "pviolence", "aesthetic")}
        self._scales = {name: _tag_range(values) for name, values in self._tags.items()}

    @property
    def vectors(self) -> int:
        return int(self.index.ntotal)

    def rows(self, ids: list[int]) -> list[dict | None]:
        """The metadata of ``ids`` in that order; None for an id this index does not hold."""
        ids = np.array([i if 0 <= i < 2**63 else -1 for i in ids], np.int64)  # faiss ids are int64, never negative
        return [None if at < 0 else self._row(int(at)) for at in self._positions(ids)]

    def _row(self, at: int) -> dict:
        # A one-row slice of the mapped file is zero-copy, where take() over its many record
        # batches concatenates whole columns (24 ms per query at 1M rows).
        return self.metadata.slice(at, 1).to_pylist()[0]

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Each id's row in the metadata, or -1 where it holds none (removed)."""
        positions = np.full(len(ids), -1, np.int64)
        chunks = np.searchsorted(self._chunk_firsts, ids, side="right") - 1
        for chunk in np.unique(chunks[chunks >= 0]):
            where = np.flatnonzero(chunks == chunk)
            chunk_ids = self._id_chunks[chunk]
            within = np.minimum(np.searchsorted(chunk_ids, ids[where]), len(chunk_ids) - 1)
            found = chunk_ids[within] == ids[where]
            positions[where[found]] = self._chunk_starts[chunk] + within[found]
        return positions

    def search(self, query: np.ndarray, options: SearchOptions, modality: str = "image") -> list[Result]:
        """Nearest neighbours of ``query`` (one L2-normalised vector) among the pairs' image
        embeddings, or their caption embeddings with ``modality="text"``, filtered as ``options`` say
        (deduplicate compares the searched embeddings, as clip-back does)."""
        index = self.index if modality == "image" else self.text_index
        if index is None:
            raise SearchError(f"modality {modality!r}: this index holds no caption embeddings (index.text_index "
                              "was off, or an older pairlake built it): materialize knn_index again")
        query = np.asarray(query, np.float32).reshape(1, -1)
        if query.shape[1] != self.index.d:
            raise SearchError(f"the query has {query.shape[1]} dimensions; this index holds {self.index.d}")
        if not np.isfinite(query).all() or not np.linalg.norm(query):
            raise SearchError("the query vector must be finite and not all zeros")
        for tag in options.filter_tags:
            if self._scales[tag] is None:
                raise SearchError(f"this index has no {tag} tag to filter by: configure [tags.{tag}] and re-tag")
        query = query / np.linalg.norm(query)
        k = max(1, min(options.num_result_ids, self.vectors))
        if options.deduplicate:
            scores, found, vectors = index.search_and_reconstruct(query, k)
            vectors = vectors[0]
        else:
            scores, found = index.search(query, k)
            vectors = None
        keep = found[0] >= 0
        ids, sims = found[0][keep], scores[0][keep]
        positions = self._positions(ids)
        order = np.flatnonzero(positions >= 0)  # gone from the metadata: removed
        if vectors is not None:  # before the tag filters, as clip-back: a hidden result still leads its group
            order = _without_duplicates(order, vectors[keep], options.duplicate_cosine)
        for tag in options.filter_tags:  # an untagged result (NaN) is hidden too
            order = order[self._tags[tag][positions[order]] <= TAG_THRESHOLD]
        if options.aesthetic_score is not None and self._scales["aesthetic"] is not None:
            order = self._by_aesthetic(order, positions, sims, options)
        return [Result(int(ids[i]), float(sims[i]), self._row(int(positions[i])) if n < options.num_images else None)
                for n, i in enumerate(order)]

    def _by_aesthetic(self, order: np.ndarray, positions: np.ndarray, sims: np.ndarray,
                      options: SearchOptions) -> np.ndarray:
        """Re-rank by similarity + weight x closeness of the result's aesthetic tag to the asked
        level (0-9 spread over the tag's range in this index). clip-retrieval instead shifts the
        query towards mean embeddings of rated images; those means would keep removed images'
        embeddings, so pairlake uses the stored tag."""
        low, high = self._scales["aesthetic"]
        target = low + (high - low) * min(max(options.aesthetic_score, 0), 9) / 9
        values = self._tags["aesthetic"][positions[order]]
        closeness = np.nan_to_num(1.0 - np.abs(values - target) / ((high - low) or 1.0), nan=0.0)
        return order[np.argsort(-(sims[order] + options.aesthetic_weight * closeness), kind="stable")]


def _tag_range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a tag over the index, or None when no row has it."""
    if np.isnan(values).all():
        return None
    return float(np.nanmin(values)), float(np.nanmax(values))


def _without_duplicates(order: np.ndarray, vectors: np.ndarray, threshold: float) -> np.ndarray:
    """``order`` without each result whose cosine to a better-ranked one (transitively) reaches
    ``threshold``: the best of each group stays, as clip-retrieval's deduplicate does."""
    if len(order) < 2:
        return order
    picked = np.ascontiguousarray(vectors[order], np.float32)
    faiss.normalize_L2(picked)
    flat = faiss.IndexFlatIP(picked.shape[1])
    flat.add(picked)
    lims, _, neighbours = flat.range_search(picked, threshold)
    parent = list(range(len(order)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(order)):
        for j in neighbours[lims[i]:lims[i + 1]]:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)  # the better-ranked result leads its group
    return order[[i for i in range(len(order)) if root(i) == i]]


def _mapped_metadata(folder: Folder, name: str, save_id: str) -> pa.Table:
    """The save's metadata file ``name`` as a memory-mapped Arrow file in this machine's cache, one
    per save; other saves' copies are deleted (a mapping still in use lives on until closed)."""
    saves = knn.metadata_cache(folder)
    path = saves / f"{save_id}.arrow"
    if not path.is_file():
        saves.mkdir(parents=True, exist_ok=True)
        partial = saves / f".{uuid.uuid4().hex}.partial"
        try:
            with folder.open(name) as handle:
                parquet = pq.ParquetFile(handle)
                with ipc.new_file(str(partial), parquet.schema_arrow) as writer:
                    for batch in parquet.iter_batches(batch_size=65_536):
                        writer.write_batch(batch)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    for older in saves.iterdir():
        if older != path and not older.name.startswith("."):
            older.unlink(missing_ok=True)
    return ipc.open_file(pa.memory_map(str(path))).read_all()


class LakeIndexes:
    """The lake's kNN indexes by variant, each loaded on first use and loaded again once its
    manifest names another save (checked at most every ``check_interval_s``; 0: every query)."""

    def __init__(self, lake: Lake, clip: ClipConfig, check_interval_s: float = 0.0) -> None:
        self.lake = lake
        self._model_id = model_identity(clip)
        self._interval = check_interval_s
        self._loaded: dict[str, tuple[LoadedIndex, float]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        indexes = self.lake.folder(lake_layout.INDEXES)
        return [name for name in indexes.folders() if indexes.sub(name).exists(knn.MANIFEST_FILE)]

    def get(self, variant: str) -> LoadedIndex:
        loaded, checked = self._loaded.get(variant, (None, 0.0))
        now = time.monotonic()
        if loaded is not None and now - checked < self._interval:
            return loaded
        folder = index_folder(self.lake, variant)
        try:  # read outside the lock: queries of other indexes, or of an unchanged one, never wait
            save_id = json.loads(folder.read_bytes(knn.MANIFEST_FILE)).get(knn.MANIFEST_INDEX_KEY, {}).get("save_id")
        except FileNotFoundError:
            raise SearchError(f"no kNN index named {variant!r}; the lake has {self.names() or 'none'}") from None
        if loaded is None or loaded.save_id != save_id:
            # A new save: every query of this index waits for it (the old one may hold removed pairs).
            with self._lock:
                loaded, _ = self._loaded.get(variant, (None, 0.0))
                if loaded is None or loaded.save_id != save_id:
                    loaded = _load(folder)
                    if loaded.manifest["model_id"] != self._model_id:
                        raise ClipModelError(f"the {variant} index holds {loaded.manifest['model_id']} embeddings; "
                                             f"clip config gives {self._model_id}")
        self._loaded[variant] = (loaded, now)
        return loaded


def _load(folder: Folder) -> LoadedIndex:
    """The folder's current save; once more if a save landed while reading it (the manifest read
    named files that save deleted)."""
    try:
        return LoadedIndex(folder)
    except (FileNotFoundError, knn.IndexLoadError):
        return LoadedIndex(folder)


class _Batches:
    """Calls ``forward`` on batches of the inputs that many threads submit: one thread runs the
    model, and whatever arrived while it ran is the next batch (no waiting to fill one, so a
    lone query pays nothing). Concurrent queries share forwards instead of each running its own
    on every core at once; the rows of a batch are computed independently, as one query's."""

    def __init__(self, forward: Callable[[list[torch.Tensor]], torch.Tensor], max_batch: int) -> None:
        self._forward, self._max_batch = forward, max_batch
        self._queue: queue.SimpleQueue[tuple[torch.Tensor, Future]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, item: torch.Tensor) -> np.ndarray:
        future: Future = Future()
        self._queue.put((item, future))
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="query-batches", daemon=True)
                self._worker.start()
        return future.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                with torch.no_grad():
                    rows = F.normalize(self._forward([item for item, _ in batch]).float(), dim=-1).cpu().numpy()
            except Exception as exc:  # noqa: BLE001 - every waiting query gets the error
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), row in zip(batch, rows):
                    future.set_result(row)


class QueryEncoder:
    """Text and image queries as L2-normalised CLIP embeddings, like the stored ones. The model
    (and the optional multilingual text tower) load on first use. Concurrent queries are encoded
    in shared batches (``_Batches``), up to ``max_batch`` at a time; tokenizing and decoding run
    in the calling threads."""

    def __init__(self, clip: ClipConfig, download: DownloadConfig, multilingual: ClipConfig | None = None,
                 max_batch: int = 16) -> None:
        self._configs = {"clip": clip, "multilingual": multilingual}
        self._models: dict[str, LoadedClip] = {}
        self._batches: dict[str, _Batches] = {}
        self._download = download
        self._max_batch = max_batch
        self._lock = threading.Lock()

    def _model(self, which: str) -> LoadedClip:
        with self._lock:
            if which not in self._models:
                self._models[which] = load_clip(self._configs[which])
            return self._models[which]

    def _batched(self, which: str, tower: str) -> _Batches:
        """The batches of model ``which`` ("clip", "multilingual") through its ``tower`` ("image", "text")."""
        key = f"{which} {tower}"
        clip = self._model(which)
        with self._lock:
            if key not in self._batches:
                if tower == "image":
                    forward = lambda items: clip.model.encode_image(torch.cat(items).to(clip.device))  # noqa: E731
                else:  # padded to the context length: encode_text trims to the batch's longest query
                    forward = lambda items: encode_text(clip.model, torch.cat(items).to(clip.device))  # noqa: E731
                self._batches[key] = _Batches(forward, self._max_batch)
            return self._batches[key]

    @property
    def has_multilingual(self) -> bool:
        return self._configs["multilingual"] is not None

    def text(self, text: str, multilingual: bool = False) -> np.ndarray:
        if multilingual and not self.has_multilingual:
            raise SearchError("use_mclip: no multilingual text model is configured (search.multilingual_model)")
        which = "multilingual" if multilingual else "clip"
        return self._batched(which, "text")(self._model(which).tokenizer([text]))

    def image(self, data: bytes) -> np.ndarray:
        """Encoded image bytes (a file's content); raises ``ImageRejected`` for what the
        downloader would refuse."""
        return self._stored_image(resize_image(data, self._download).data)

    def _stored_image(self, stored: bytes) -> np.ndarray:
        return self._batched("clip", "image")(_pixels(self._model("clip"), stored))

    def image_url(self, url: str) -> np.ndarray:
        """The image at ``url``, fetched by pairlake's downloader (its address guard, size caps and
        the origin's opt-out signals), embedded as stored."""
        from spark_jobs.download.downloader import download_batch

        fetched = download_batch(pa.table({"uid": ["query"], "url": [url], "warc_file": ["query"]}),
                                 self._download).to_pylist()[0]
        if fetched["status"] != "ok":
            detail = f" ({' '.join(fetched['error_detail'].split())})" if fetched.get("error_detail") else ""
            raise SearchError(f"image_url {url}: {fetched['error']}{detail}")
        return self._stored_image(fetched["image"])


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, computed over the tokens up to the last end-of-text only. In
    CLIP's text tower (causal attention, pooled at the end-of-text token) no position sees a later
    one, so the padding after it never reaches the output: the same embedding for a fraction of
    the work (a 6-token query in a 77-token context). Other text towers run as they are."""
    import open_clip

    if not (isinstance(model, open_clip.CLIP) and model.attn_mask is not None and model.text_pool_type == "argmax"):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


@torch.no_grad()
def embed_as_stored(clip: LoadedClip, data: bytes, download: DownloadConfig) -> np.ndarray:
    """The L2-normalised float32 CLIP embedding of an image given as bytes, resized and re-encoded
    first exactly as the downloader stores images: stored embeddings were taken from those bytes,
    and a raw image (other size, no border) would not compare like for like.
    Raises ``ImageRejected`` for what the downloader would refuse."""
    pixels = _pixels(clip, resize_image(data, download).data).to(clip.device)
    return F.normalize(clip.model.encode_image(pixels).float(), dim=-1).cpu().numpy()[0]


def _pixels(clip: LoadedClip, stored: bytes) -> torch.Tensor:
    """A stored image's bytes as the model's input batch of one."""
    with Image.open(io.BytesIO(stored)) as image:
        return clip.preprocess(image.convert("RGB")).unsqueeze(0)



def similar_stored_images(lake: Lake, vector: np.ndarray, model_id: str, min_similarity: float) -> dict[str, float]:
    """uid -> cosine of every stored image embedding (table clip_scores, every pair, curated or
    not) at least ``min_similarity`` to ``vector``: an exact scan, batch by batch."""
    dataset = lake.dataset(CLIP_SCORES)
    if dataset is None:
        return {}
    found: dict[str, float] = {}
    batches = dataset.to_batches(
        columns=["uid", "embedding_dim", "image_embedding"],
        filter=(pc.field("model_id") == model_id) & (pc.field("embedding_dim") == len(vector)),
    )
    query = np.asarray(vector, np.float32)
    for batch in batches:
        if not batch.num_rows:
            continue
        sims = embeddings_from_column(batch.column("image_embedding"), len(query)) @ query
        for i in np.flatnonzero(sims >= min_similarity):
            found[batch.column("uid")[int(i)].as_py()] = float(sims[i])
    return found


def remove_from_indexes(lake: Lake, uids: set[str], curated_version: int | None) -> dict[str, int]:
    """Remove ``uids`` from every variant's index in the lake; returns vectors removed per variant.

    The metadata without them is published under a new name first, then the index and the manifest
    that names it (``knn.save_index``), which deletes the old metadata file. Every manifest then names
    ``curated_version``: the removal purged the history of curated, so the version an index was
    built from can no longer be read, and the index (without the removed vectors) matches the new one.
    """
    removed: dict[str, int] = {}
    wanted = pa.array(sorted(uids), pa.string())
    indexes = lake.folder(lake_layout.INDEXES)
    for variant in indexes.folders():
        folder = indexes.sub(variant)
        if not folder.exists(knn.MANIFEST_FILE):
            continue
        old = knn.metadata_name(folder)
        if old is None:
            continue
        gone_ids = []
        with folder.open(old) as handle:  # batch by batch: the metadata of a large index is large
            for batch in pq.ParquetFile(handle).iter_batches(columns=["id", "uid"], batch_size=65_536):
                gone_ids.append(batch.column("id").filter(pc.is_in(batch.column("uid"), wanted)).to_numpy())
        gone = np.concatenate(gone_ids) if gone_ids else np.zeros(0, np.int64)
        if not gone.size:
            knn.update_manifest(folder, source_version=curated_version)
            continue
        index, manifest = knn.load_index(folder)
        text_index = knn.saved_index(folder, manifest, "text") if knn.has_index(manifest, "text") else None
        with knn.new_lists_file(folder) as new_lists, knn.new_lists_file(folder) as new_text_lists:
            removed[variant] = knn.remove_ids(index, gone, new_lists)
            if text_index is not None:
                knn.remove_ids(text_index, gone, new_text_lists)
            for _, key in knn.MODALITIES.values():
                manifest.pop(key, None)
            manifest.update(vectors=int(index.ntotal), source_version=curated_version,
                            **{METADATA_MANIFEST_KEY: knn.new_metadata_name()})
            dropped = pa.array(gone)
            with folder.open(old) as source, folder.publish(manifest[METADATA_MANIFEST_KEY]) as target, \
                    pq.ParquetWriter(target, METADATA_SCHEMA) as writer:
                for batch in pq.ParquetFile(source).iter_batches(batch_size=65_536):
                    writer.write_batch(batch.filter(pc.invert(pc.is_in(batch.column("id"), dropped))))
            knn.save_index(folder, index, manifest, text_index)
    return removed
