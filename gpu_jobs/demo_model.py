"""Train the demo CLIP model (``pairlake-demo-tiny``) from scratch on synthetic captioned shapes.

No weights can be downloaded for the demo, so it trains its own: several minutes on two CPU cores,
deterministic from a seed. Training images take the crawl's path: encoded as the sample site
serves them, resized by the downloader (border mode, 256 px), then open_clip's preprocessing, so
the model scores downloaded crawl images as it saw them. It is evaluated on renders from a
stream it never trained on: zero-shot accuracy over all classes and caption cosines.

    python -m gpu_jobs.demo_model --out .cache/demo_model
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import inspect
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from gpu_jobs import synthetic_shapes as shapes
from gpu_jobs.clip_model import MODEL_CONFIG_DIR, LoadedClip, load_clip
from infra import sample_crawl
from infra.config import ClipConfig, DownloadConfig
from spark_jobs.download import resizer

MODEL_NAME = "pairlake-demo-tiny"
CHECKPOINT_NAME = f"{MODEL_NAME}.pt"
REPORT_NAME = "report.json"

DEFAULT_STEPS = 1200
BATCH_SIZE = 128
POOL_SIZE = 3000  # distinct training renders; flips and quarter turns multiply them by 8
EVAL_PER_CLASS = 20
LEARNING_RATE = 2e-3
WARMUP_STEPS = 30
WEIGHT_DECAY = 0.1
# Separate streams of the same seed: evaluation images are never training images.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


@dataclass(frozen=True)
class DemoModelReport:
    checkpoint: str
    fingerprint: str
    seed: int
    steps: int
    train_seconds: float  # the optimisation loop alone
    total_seconds: float  # rendering, training and evaluation
    held_out_accuracy: float  # zero-shot over all classes, on renders of a stream never trained on
    matched_cos: float  # image vs its own caption
    mismatched_cos: float  # image vs the same template for a random other class
    wrong_colour_cos: float  # right shape, wrong colour
    wrong_shape_cos: float  # right colour, wrong shape


def load_demo_model(checkpoint: str | Path) -> LoadedClip:
    """The trained model as CLIP scoring loads it (``gpu_jobs.clip_model.load_clip``), on CPU."""
    return load_clip(ClipConfig(model=MODEL_NAME, checkpoint=str(checkpoint), device="cpu"))


def fingerprint(seed: int, steps: int) -> str:
    """Changes whenever anything that shapes the trained weights does."""
    digest = hashlib.sha256()
    for source in (Path(__file__), Path(shapes.__file__), Path(resizer.__file__), MODEL_CONFIG_DIR / f"{MODEL_NAME}.json"):
        digest.update(source.read_bytes())
    digest.update(inspect.getsource(sample_crawl.served_image).encode())
    digest.update(f"seed={seed} steps={steps} open_clip={open_clip.__version__}".encode())
    return digest.hexdigest()[:16]


def as_scored(image: Image.Image, preprocess: Callable, rng: np.random.Generator) -> torch.Tensor:
    """What CLIP scoring sees of a crawl image: served as the sample site serves it, resized by
    the downloader (its default border mode), decoded, then open_clip's preprocessing."""
    body, _ = sample_crawl.served_image(image, rng)
    resized = resizer.resize_image(body, DownloadConfig())
    with Image.open(io.BytesIO(resized.data)) as downloaded:
        return preprocess(downloaded.convert("RGB"))


def _render_pool(seed: int, n: int, clip: LoadedClip, progress: bool):
    """``n`` scored training renders of all classes: (fp16 images, class ids, background ids)."""
    rng = np.random.default_rng([seed, _TRAIN_STREAM])
    samples = shapes.dataset(seed * 1000 + _TRAIN_STREAM, n)
    images, labels, backgrounds = [], [], []
    for s in tqdm(samples, total=n, desc="rendering", disable=not progress, leave=False):
        images.append(as_scored(s.image, clip.preprocess, rng).half())  # half the memory; ample for 64 px
        labels.append(shapes.CLASSES.index((s.colour, s.shape)))
        backgrounds.append(list(shapes.BACKGROUNDS).index(s.background))
    return torch.stack(images), torch.tensor(labels), torch.tensor(backgrounds)


def _caption_tokens(tokenizer: Callable) -> torch.Tensor:
    """Token ids of every caption, indexed [class, background, template]."""
    texts = [c for colour, shape in shapes.CLASSES for bg in shapes.BACKGROUNDS for c in shapes.captions(colour, shape, bg)]
    return tokenizer(texts).view(len(shapes.CLASSES), len(shapes.BACKGROUNDS), len(shapes.TEMPLATES), -1)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the 8 flips/quarter turns per batch: neither shapes nor captions depend on them."""
    k = int(torch.randint(4, (1,), generator=generator))
    images = torch.rot90(images, k, dims=(2, 3))
    return (images.flip(3) if torch.randint(2, (1,), generator=generator) else images).contiguous()


def _loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CLIP's softmax loss, made multi-positive: a batch holds several images of each class, so
    plain CLIP loss would push their (identical) captions apart."""
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    logits = logit_scale * image_emb @ text_emb.T
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@torch.no_grad()
def _encode_texts(clip: LoadedClip, texts: list[str]) -> torch.Tensor:
    return F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1)


@torch.no_grad()
def evaluate(clip: LoadedClip, seed: int = 0, per_class: int = EVAL_PER_CLASS) -> dict[str, float]:
    """Zero-shot accuracy and caption cosines on fresh renders of every class, seen as scored."""
    clip.model.eval()
    rng = np.random.default_rng([seed, _EVAL_STREAM])
    samples = list(shapes.dataset(seed * 1000 + _EVAL_STREAM, per_class * len(shapes.CLASSES)))
    images = torch.stack([as_scored(s.image, clip.preprocess, rng) for s in samples])
    image_emb = F.normalize(clip.model.encode_image(images), dim=-1)

    # Zero-shot classifier: each class's mean embedding over its background-free captions.
    class_emb = F.normalize(torch.stack([_encode_texts(clip, shapes.captions(c, s)).mean(0) for c, s in shapes.CLASSES]), dim=-1)
    predicted = (image_emb @ class_emb.T).argmax(1)
    truth = torch.tensor([shapes.CLASSES.index((s.colour, s.shape)) for s in samples])
    correct = (predicted == truth).float()

    # Each image meets one template filled with its own class and with others, keeping template
    # and background, so only the class words differ between the cosines.
    templates = rng.integers(len(shapes.TEMPLATES), size=len(samples))

    def cos_with(classes: list[tuple[str, str]]) -> float:
        texts = [shapes.captions(c, sh, s.background)[t] for (c, sh), s, t in zip(classes, samples, templates)]
        return float((image_emb * _encode_texts(clip, texts)).sum(1).mean())

    def other(options, exclude):
        rest = [o for o in options if o != exclude]
        return rest[int(rng.integers(len(rest)))]

    return {
        "held_out_accuracy": float(correct.mean()),
        "matched_cos": cos_with([(s.colour, s.shape) for s in samples]),
        "mismatched_cos": cos_with([other(shapes.CLASSES, (s.colour, s.shape)) for s in samples]),
        "wrong_colour_cos": cos_with([(other(list(shapes.COLOURS), s.colour), s.shape) for s in samples]),
        "wrong_shape_cos": cos_with([(s.colour, other(shapes.SHAPES, s.shape)) for s in samples]),
    }


def train_demo_model(out_dir: Path, seed: int = 0, steps: int = DEFAULT_STEPS, progress: bool = True) -> DemoModelReport:
    """Train from scratch; write ``out_dir/pairlake-demo-tiny.pt`` and ``out_dir/report.json``."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the initial weights
    clip = load_clip(ClipConfig(model=MODEL_NAME, device="cpu"), allow_random_init=True)
    model = clip.model
    images, labels, backgrounds = _render_pool(seed, POOL_SIZE, clip, progress)
    tokens = _caption_tokens(clip.tokenizer)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.98), eps=1e-6
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / WARMUP_STEPS
        if step < WARMUP_STEPS
        else 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS))),
    )
    generator = torch.Generator().manual_seed(seed)

    model.train()
    train_started = time.perf_counter()
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(images), (BATCH_SIZE,), generator=generator)
        template = torch.randint(len(shapes.TEMPLATES), (BATCH_SIZE,), generator=generator)
        image_emb, text_emb, logit_scale = model(
            _augment(images[idx].float(), generator), tokens[labels[idx], backgrounds[idx], template]
        )
        loss = _loss(image_emb, text_emb, logit_scale, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 destabilises training
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - train_started

    metrics = evaluate(clip, seed)
    checkpoint = out_dir / CHECKPOINT_NAME
    tmp = checkpoint.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, checkpoint)  # readers never see a half-written checkpoint
    report = DemoModelReport(
        checkpoint=str(checkpoint),
        fingerprint=fingerprint(seed, steps),
        seed=seed,
        steps=steps,
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - started, 1),
        **{k: round(v, 4) for k, v in metrics.items()},
    )
    (out_dir / REPORT_NAME).write_text(json.dumps(asdict(report), indent=1) + "\n")
    return report


def read_report(out_dir: Path) -> DemoModelReport:
    """The report of the model trained into ``out_dir``."""
    return DemoModelReport(**json.loads((Path(out_dir) / REPORT_NAME).read_text()))


def _stored_fingerprint(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / REPORT_NAME).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_demo_model(
    out_dir: Path, seed: int = 0, steps: int = DEFAULT_STEPS, progress: bool = False, force: bool = False
) -> Path:
    """The checkpoint in ``out_dir``, trained first if missing, stale (fingerprint) or ``force``d."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_NAME
    # Engineers and test runs share the cache: the lock makes a second caller wait, not retrain.
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not checkpoint.exists() or _stored_fingerprint(out_dir) != fingerprint(seed, steps):
            train_demo_model(out_dir, seed, steps, progress)
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train (or reuse) the demo CLIP model and print its report.")
    parser.add_argument("--out", type=Path, default=Path(".cache/demo_model"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--force", action="store_true", help="retrain even when the cached model is current")
    args = parser.parse_args(argv)
    ensure_demo_model(args.out, args.seed, args.steps, progress=True, force=args.force)
    print(json.dumps(asdict(read_report(args.out)), indent=1))


if __name__ == "__main__":
    main()
