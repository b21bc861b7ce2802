"""`pairlake train-head`: fit a tag head on the lake's stored embeddings from labelled uids."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from gpu_jobs.clip_model import model_identity
from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs.embedding_heads import HeadError, TrainReport, save_head, train_head
from infra import lake_layout
from infra.config import PairlakeConfig
from infra.delta_store import Lake
from infra.tables import CLIP_SCORES


def read_labels(path: Path) -> dict[str, int]:
    """uid -> 0/1 from a CSV with a header naming ``uid`` and ``label``; bad lines are reported."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"uid", "label"} <= set(reader.fieldnames):
                raise HeadError(f"{path}: the header must name columns uid and label, got {reader.fieldnames}")
            labels: dict[str, int] = {}
            bad = []
            for line, row in enumerate(reader, start=2):
                uid, label = (row.get("uid") or "").strip(), (row.get("label") or "").strip()
                if not uid or label not in ("0", "1") or labels.get(uid, int(label or 0)) != int(label or 0):
                    bad.append(line)
                    continue
                labels[uid] = int(label)
    except OSError as exc:
        raise HeadError(f"cannot read labels {path}: {exc}") from None
    if bad:
        raise HeadError(f"{path}: {len(bad)} bad lines (need a uid and a label 0 or 1, one label per uid): lines {bad[:10]}")
    return labels


def train_registered_head(
    config: PairlakeConfig, name: str, labels_path: Path, layout: str = "linear", holdout: float = 0.2, seed: int = 0
) -> tuple[TrainReport, str]:
    """Train ``name`` on the configured model's stored embeddings of the labelled uids and save it
    into the lake's heads folder, where a tag config can name it."""
    labels = read_labels(labels_path)
    lake = Lake.of(config.lake)
    model_id = model_identity(config.clip)
    scores = lake.read(
        CLIP_SCORES, columns=["uid", "embedding_dim", "image_embedding"],
        filter=(pc.field("model_id") == model_id) & pc.field("uid").isin(list(labels)),
    )
    missing = set(labels) - set(scores["uid"].to_pylist())
    if missing:
        raise HeadError(f"{len(missing)} labelled uids have no {model_id} embedding in clip_scores, e.g. {sorted(missing)[:3]}")
    embeddings = embeddings_from_column(scores["image_embedding"], scores["embedding_dim"][0].as_py())
    y = np.array([labels[u] for u in scores["uid"].to_pylist()])
    head, report = train_head(embeddings.astype(np.float32), y, name, config.clip.model, layout, holdout, seed)
    return report, save_head(head, lake.folder(lake_layout.HEADS))
