"""Tags from stored CLIP image embeddings: one scorer per configured tag, never re-reading images.

A tag's scorer is a head file (``gpu_jobs.embedding_heads``), a head trained into the lake with
``pairlake train-head``, or zero-shot prompts. ``punsafe``, ``pwatermark`` and ``aesthetic`` have
columns of their own in ``image_tags``; any other configured tag goes into its ``extra`` map.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs.embedding_heads import HeadError, ZeroShotScorer, load_head
from infra import lake_layout
from infra.config import ClipConfig, TagScorerConfig
from infra.delta_store import Lake
from infra.tables import IMAGE_TAGS

STANDARD_TAGS = ("punsafe", "pwatermark", "aesthetic")


class Scorer(Protocol):
    def check_compatible(self, clip_model: str, width: int) -> None: ...

    def score(self, embeddings: np.ndarray) -> np.ndarray: ...


def registered_heads(lake: Lake) -> contextlib.AbstractContextManager[Path]:
    """The heads ``pairlake train-head`` registered in the lake (a tag config names them by name),
    as a local folder for the duration of a ``with`` block."""
    return lake.local_copy(lake_layout.HEADS)


def head_path(scorer: TagScorerConfig, registered: Path) -> Path:
    """A head file given as a path (it has a suffix), or a registered head's name."""
    path = Path(scorer.head)
    return path if path.suffix else registered / f"{scorer.head}.pt"


def load_scorers(
    tags: dict[str, TagScorerConfig], clip: ClipConfig, width: int, registered: Path
) -> tuple[dict[str, Scorer], dict[str, str]]:
    """The configured scorers, each checked against ``clip``'s embeddings of ``width``, and each
    one's identity (head file and digest, or model and prompts) for the tags table."""
    # Here, not at the top: Spark tasks import this module to tag, and need no open_clip for it.
    from gpu_jobs.clip_model import load_clip, model_identity

    model_id = model_identity(clip)
    scorers: dict[str, Scorer] = {}
    identities: dict[str, str] = {}
    text_model = None  # zero-shot prompts need the text tower: loaded once, only then
    for name, config in sorted(tags.items()):
        if config.head:
            path = head_path(config, registered)
            scorer: Scorer = load_head(path, config.layout or None, device="cpu")
            scorer.check_compatible(clip.model, width)
            identities[name] = f"head:{path.name}@sha256:{_digest(path)}"
        else:
            text_model = text_model or load_clip(clip)
            scorer = ZeroShotScorer(name, config.positive, config.negative).fit(text_model)
            scorer.check_compatible(model_id, width)
            prompts = json.dumps([config.positive, config.negative])
            identities[name] = f"zero-shot:{model_id}@{hashlib.sha256(prompts.encode()).hexdigest()[:12]}"
        scorers[name] = scorer
    return scorers, identities


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def tag_embeddings(scores: pa.Table, scorers: dict[str, Scorer], identities: dict[str, str]) -> pa.Table:
    """IMAGE_TAGS rows for ``clip_scores`` rows (uid, warc_file, model_id, embedding_dim,
    image_embedding) of one model."""
    if scores.num_rows == 0:
        return IMAGE_TAGS.schema.empty_table()
    dims = set(scores["embedding_dim"].to_pylist())
    if len(dims) != 1:
        raise HeadError(f"embeddings of several widths {sorted(dims)} in one tagging batch")
    embeddings = embeddings_from_column(scores["image_embedding"], dims.pop()).astype(np.float32)
    values = {name: scorer.score(embeddings) for name, scorer in scorers.items()}
    extra_names = [n for n in values if n not in STANDARD_TAGS]
    n = scores.num_rows
    columns = {
        "uid": scores["uid"],
        "warc_file": scores["warc_file"],
        "model_id": scores["model_id"],
        **{tag: pa.array(values[tag], pa.float32()) if tag in values else pa.nulls(n, pa.float32()) for tag in STANDARD_TAGS},
        "extra": pa.array(
            [[(name, float(values[name][i])) for name in extra_names] for i in range(n)],
            pa.map_(pa.string(), pa.float32()),
        ),
        "scorers": pa.array([json.dumps(identities, sort_keys=True)] * n, pa.string()),
    }
    return pa.table(columns).cast(IMAGE_TAGS.schema)
