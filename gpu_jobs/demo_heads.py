"""Train the demo's tag heads on synthetic labels, over the demo CLIP model's image embeddings.

No real safety or quality labels can be downloaded, so the demo stands them in with overlays the
sample crawl also serves (``synthetic_shapes.OVERLAYS``): ``pwatermark`` = watermark text,
``punsafe`` = a hazard-stripe frame, ``aesthetic`` = P(not degraded). The heads are small MLPs
trained with ``embedding_heads.train_head`` on renders passed through the crawl's path, their
embeddings rounded to float16 as ``clip_scores`` stores them; committed beside the demo model.

    python -m gpu_jobs.demo_heads --model-dir infra/demo_model
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import inspect
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpu_jobs import demo_model, embedding_heads
from gpu_jobs import synthetic_shapes as shapes

# tag -> (overlay, label when the overlay is present)
HEADS: dict[str, tuple[str, int]] = {"punsafe": ("hazard", 1), "pwatermark": ("watermark", 1), "aesthetic": ("degraded", 0)}
RENDERS = 1200  # 40% plain, 20% per overlay
# One hidden layer: the 64-d embeddings of a model this small hold a watermark less linearly
# than a big CLIP's (held-out accuracy 0.67 linear, 0.88 with this MLP).
HIDDEN = (128,)
STEPS = 2000
_STREAM = 2  # demo_model uses streams 0 (training) and 1 (evaluation)
REPORT_NAME = "report.json"


def heads_dir(model_dir: Path) -> Path:
    return Path(model_dir) / "heads"


def fingerprint(checkpoint: Path, seed: int) -> str:
    """Changes with the demo model's weights and with the code that shapes the heads."""
    digest = hashlib.sha256(checkpoint.read_bytes())
    for module in (demo_model, embedding_heads, shapes):
        digest.update(inspect.getsource(module).encode())
    digest.update(Path(__file__).read_bytes() + f"seed={seed}".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _embedded_renders(checkpoint: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(float16-rounded image embeddings, overlay index: 0 none, 1.. shapes.OVERLAYS order)."""
    clip = demo_model.load_demo_model(checkpoint)
    rng = np.random.default_rng([seed, _STREAM])
    overlays = list(shapes.OVERLAYS)
    embedded, which = [], []
    samples = list(shapes.dataset(seed * 1000 + _STREAM, RENDERS))
    for start in range(0, len(samples), 128):
        batch = []
        for i, s in enumerate(samples[start : start + 128], start=start):
            overlay = 0 if i % 5 < 2 else i % 5 - 1  # 2 of 5 plain, then one of each overlay
            image = shapes.OVERLAYS[overlays[overlay - 1]](s.image, rng) if overlay else s.image
            batch.append(demo_model.as_scored(image, clip.preprocess, rng))
            which.append(overlay)
        embedded.append(F.normalize(clip.model.encode_image(torch.stack(batch)), dim=-1).numpy())
    return np.concatenate(embedded).astype(np.float16).astype(np.float32), np.array(which)


def train_demo_heads(model_dir: Path, seed: int = 0) -> dict[str, embedding_heads.TrainReport]:
    """Train and save every demo head into ``model_dir/heads``; returns their reports."""
    checkpoint = Path(model_dir) / demo_model.CHECKPOINT_NAME
    out = heads_dir(model_dir)
    reports = {}
    with demo_model.one_thread():  # the same heads on any machine
        embeddings, which = _embedded_renders(checkpoint, seed)
        for tag, (overlay, present) in HEADS.items():
            has = which == list(shapes.OVERLAYS).index(overlay) + 1
            labels = np.where(has, present, 1 - present)
            head, report = embedding_heads.train_head(
                embeddings, labels, tag, demo_model.MODEL_NAME, layout="mlp", seed=seed, hidden=HIDDEN, steps=STEPS
            )
            embedding_heads.save_head(head, out)
            reports[tag] = report
    (out / REPORT_NAME).write_text(
        json.dumps({"fingerprint": fingerprint(checkpoint, seed), "heads": {t: asdict(r) for t, r in reports.items()}}, indent=1)
    )
    return reports


def is_current(model_dir: Path, seed: int = 0) -> bool:
    """Whether the heads beside the model in ``model_dir`` were trained on its weights by this code."""
    try:
        stored = json.loads((heads_dir(model_dir) / REPORT_NAME).read_text())["fingerprint"]
        return stored == fingerprint(Path(model_dir) / demo_model.CHECKPOINT_NAME, seed)
    except (OSError, ValueError, KeyError):
        return False


def ensure_demo_heads(model_dir: Path, seed: int = 0) -> Path:
    """The heads folder, (re)trained when missing or made for other weights or code."""
    out = heads_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(model_dir, seed):
            train_demo_heads(model_dir, seed)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train (or reuse) the demo model and its tag heads and print the heads' accuracy."
    )
    parser.add_argument("--model-dir", type=Path, default=Path("infra/demo_model"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    demo_model.ensure_demo_model(args.model_dir, args.seed)  # the heads are trained over its embeddings
    ensure_demo_heads(args.model_dir, args.seed)
    print((heads_dir(args.model_dir) / REPORT_NAME).read_text())


if __name__ == "__main__":
    main()
