"""kNN search over a curated variant's index: text and image queries, and removals.

The index (built by ``spark_jobs.knn_index_job``) lives in ``<lake>/indexes/<variant>/``, a local
folder or a prefix in a bucket: ``index.faiss`` and ``manifest.json`` (from ``gpu_jobs.knn_index``),
the ``.ivfdata`` lists file of an on-disk index, and ``uids.parquet``, the uid of every faiss id.
The manifest names the curated Delta version and CLIP model it was built from and the recall@10
measured at build time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from gpu_jobs import knn_index as knn
from gpu_jobs.clip_model import ClipModelError, LoadedClip, load_clip, model_identity
from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs.knn_index import UIDS_NAME, index_folder
from infra import lake_layout
from infra.config import ClipConfig, DownloadConfig
from infra.delta_store import Lake
from infra.tables import CLIP_SCORES, CURATED
from spark_jobs.download.resizer import resize_image

@dataclass(frozen=True)
class Hit:
    uid: str
    caption: str
    url: str
    similarity: float


class VariantSearch:
    """Text → image and image → image search over one curated variant's index."""

    def __init__(self, lake: Lake, variant: str, clip: ClipConfig, download: DownloadConfig) -> None:
        folder = index_folder(lake, variant)
        self.index, self.manifest = knn.load_index(folder)
        if model_identity(clip) != self.manifest["model_id"]:
            raise ClipModelError(
                f"the {variant} index holds {self.manifest['model_id']} embeddings; clip config gives {model_identity(clip)}"
            )
        with folder.open(UIDS_NAME) as handle:
            ids = pq.read_table(handle)
        self.uids = dict(zip(ids["id"].to_pylist(), ids["uid"].to_pylist()))
        rows = lake.read(
            CURATED, version=self.manifest["source_version"], columns=["uid", "caption", "url"],
            filter=pc.field("variant") == variant,
        )
        self.pairs = {r["uid"]: (r["caption"], r["url"]) for r in rows.to_pylist()}
        self._clip_config = clip
        self._download = download
        self._clip: LoadedClip | None = None

    @property
    def clip(self) -> LoadedClip:
        self._clip = self._clip or load_clip(self._clip_config)
        return self._clip

    def by_embedding(self, vector: np.ndarray, k: int) -> list[Hit]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        # faiss allocates k results per query whatever the index holds: never ask for more than it has.
        k = max(1, min(k, self.index.ntotal))
        scores, ids = knn.search(self.index, np.asarray(vector, np.float32).reshape(1, -1), k)
        return [
            Hit(self.uids[i], *self.pairs[self.uids[i]], float(s))
            for s, i in zip(scores[0], ids[0])
            if i >= 0  # fewer than k vectors, or ids removed from the index
        ]

    @torch.no_grad()
    def by_text(self, text: str, k: int = 10) -> list[Hit]:
        tokens = self.clip.tokenizer([text]).to(self.clip.device)
        return self.by_embedding(F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1).cpu().numpy(), k)

    def by_image(self, data: bytes, k: int = 10) -> list[Hit]:
        """Images like the one in ``data`` (encoded image bytes, e.g. a file's content)."""
        return self.by_embedding(embed_as_stored(self.clip, data, self._download), k)


@torch.no_grad()
def embed_as_stored(clip: LoadedClip, data: bytes, download: DownloadConfig) -> np.ndarray:
    """The L2-normalised float32 CLIP embedding of an image given as bytes, resized and re-encoded
    first exactly as the downloader stores images: stored embeddings were taken from those bytes,
    and a raw image (other size, no border) would not compare like for like.
    Raises ``ImageRejected`` for what the downloader would refuse."""
    resized = resize_image(data, download)
    with Image.open(io.BytesIO(resized.data)) as image:
        pixels = clip.preprocess(image.convert("RGB")).unsqueeze(0).to(clip.device)
    return F.normalize(clip.model.encode_image(pixels).float(), dim=-1).cpu().numpy()[0]


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

    Every manifest then names ``curated_version``: the removal purged the history of curated, so
    the version an index was built from can no longer be read, and the index (without the removed
    vectors) matches the new one.
    """
    removed: dict[str, int] = {}
    indexes = lake.folder(lake_layout.INDEXES)
    for variant in indexes.folders():
        folder = indexes.sub(variant)
        if not folder.exists(UIDS_NAME):
            continue
        with folder.open(UIDS_NAME) as handle:
            ids = pq.read_table(handle)
        gone = pc.is_in(ids["uid"], pa.array(sorted(uids), pa.string()))
        if not pc.any(gone).as_py():
            knn.update_manifest(folder, source_version=curated_version)
            continue
        index, manifest = knn.load_index(folder)
        with knn.new_lists_file(folder) as new_lists:
            removed[variant] = knn.remove_ids(index, ids.filter(gone)["id"].to_numpy(), new_lists)
            manifest.pop(knn.MANIFEST_INDEX_KEY, None)
            manifest.update(vectors=int(index.ntotal), source_version=curated_version)
            with folder.publish(UIDS_NAME) as kept:  # written first, published after the index
                pq.write_table(ids.filter(pc.invert(gone)), kept)
                knn.save_index(folder, index, manifest)
    return removed
