"""Train the demo CLIP model (``pairlake-demo-tiny``) from scratch on synthetic captioned shapes.

No weights can be downloaded for the demo, so it trains its own: about ten minutes of one CPU
core, deterministic from a seed. Training images take the crawl's path: encoded as the sample site
serves them, resized by the downloader (border mode, 256 px), then open_clip's preprocessing, so
the model scores downloaded crawl images as it saw them. It is evaluated on renders from a
stream it never trained on: zero-shot accuracy over all classes and caption cosines.

    python -m gpu_jobs.demo_model --out infra/demo_model

The trained model is committed there (with its report and tag heads) like a golden file: a fresh
clone, its demo and its tests use it while its fingerprint matches this code, and retrain it in
place when it does not (then commit the new files).
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Callable, Iterator

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

DEFAULT_STEPS = 600
BATCH_SIZE = 128
POOL_SIZE = 2000  # distinct training renders; flips and quarter turns multiply them by 8
EVAL_PER_CLASS = 20
LEARNING_RATE = 2e-3
WARMUP_STEPS = 30
WEIGHT_DECAY = 0.1
# The threshold loss's boundary sits at LAION's ViT-B/32 threshold, so the demo filters like it.
SIGMOID_BOUNDARY = 0.3
SIGMOID_SLOPE = 10.0
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
    overlay_accuracy: float  # a caption naming an overlay fits the overlaid image better than the clean one
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


# Overlay ids: 0 = none, then shapes.OVERLAYS in order. A caption's overlay id 0 means "not said".
_OVERLAY_NAMES: tuple[str | None, ...] = (None, *shapes.OVERLAYS)
OVERLAY_SHARE = 0.3  # of training renders carrying one overlay (equal shares)
_DETAIL_WEIGHTS = torch.tensor([0.25, 0.5, 0.25])  # hard negatives: another colour, shape, overlay


def _render_pool(seed: int, n: int, clip: LoadedClip, progress: bool):
    """``n`` scored training renders of all classes: (fp16 images, class ids, background ids,
    overlay ids)."""
    rng = np.random.default_rng([seed, _TRAIN_STREAM])
    samples = shapes.dataset(seed * 1000 + _TRAIN_STREAM, n)
    images, labels, backgrounds, overlays = [], [], [], []
    for s in tqdm(samples, total=n, desc="rendering", disable=not progress, leave=False):
        overlay = int(rng.integers(1, len(_OVERLAY_NAMES))) if rng.random() < OVERLAY_SHARE else 0
        image = shapes.OVERLAYS[_OVERLAY_NAMES[overlay]](s.image, rng) if overlay else s.image
        images.append(as_scored(image, clip.preprocess, rng).half())  # half the memory; ample for 64 px
        labels.append(shapes.CLASSES.index((s.colour, s.shape)))
        backgrounds.append(list(shapes.BACKGROUNDS).index(s.background))
        overlays.append(overlay)
    return torch.stack(images), torch.tensor(labels), torch.tensor(backgrounds), torch.tensor(overlays)


def _caption_tokens(tokenizer: Callable) -> torch.Tensor:
    """Token ids of every caption, indexed [class, background, template, overlay said]."""
    texts = [
        shapes.with_overlay(c, overlay)
        for colour, shape in shapes.CLASSES
        for bg in shapes.BACKGROUNDS
        for c in shapes.captions(colour, shape, bg)
        for overlay in _OVERLAY_NAMES
    ]
    return tokenizer(texts).view(len(shapes.CLASSES), len(shapes.BACKGROUNDS), len(shapes.TEMPLATES), len(_OVERLAY_NAMES), -1)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the 8 flips/quarter turns per batch: neither shapes nor captions depend on them."""
    k = int(torch.randint(4, (1,), generator=generator))
    images = torch.rot90(images, k, dims=(2, 3))
    return (images.flip(3) if torch.randint(2, (1,), generator=generator) else images).contiguous()


def _contrastive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """CLIP's softmax loss, made multi-positive: a batch holds several images of each class, so
    plain CLIP loss would push their (identical) captions apart."""
    positive = positive.float()
    to_text = F.cross_entropy(logits, positive / positive.sum(dim=1, keepdim=True))
    to_image = F.cross_entropy(logits.T, (positive / positive.sum(dim=0, keepdim=True)).T)
    return (to_text + to_image) / 2


def _threshold_loss(cosines: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """A per-pair sigmoid loss whose boundary is a fixed cosine: softmax only ranks captions, while
    filtering compares one cosine with a threshold, so matches must land above it and mismatches,
    one wrong word included, below. Positives and negatives weigh equally."""
    per_pair = F.binary_cross_entropy_with_logits(
        SIGMOID_SLOPE * (cosines - SIGMOID_BOUNDARY), positive.float(), reduction="none"
    )
    return (per_pair[positive].mean() + per_pair[~positive].mean()) / 2


def _hard_negatives(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class id: the same shape in another colour, and the same colour as another shape."""
    n_colours, n_shapes = len(shapes.COLOURS), len(shapes.SHAPES)
    colour, shape = labels // n_shapes, labels % n_shapes  # CLASSES is colour-major
    other_colour = (colour + torch.randint(1, n_colours, labels.shape, generator=generator)) % n_colours
    other_shape = (shape + torch.randint(1, n_shapes, labels.shape, generator=generator)) % n_shapes
    return other_colour * n_shapes + shape, colour * n_shapes + other_shape


@torch.no_grad()
def _encode_texts(clip: LoadedClip, texts: list[str]) -> torch.Tensor:
    return F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1)


@torch.no_grad()
def evaluate(clip: LoadedClip, seed: int = 0, per_class: int | None = None) -> dict[str, float]:
    """Zero-shot accuracy and caption cosines on fresh renders of every class, seen as scored
    (``per_class`` renders of each; EVAL_PER_CLASS, read at call time, when None)."""
    per_class = EVAL_PER_CLASS if per_class is None else per_class
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

    # Overlays: a caption naming one should fit the overlaid image better than the same image clean.
    said_better = []
    for overlay in shapes.OVERLAYS:
        overlaid = torch.stack([as_scored(shapes.OVERLAYS[overlay](s.image, rng), clip.preprocess, rng) for s in samples])
        overlaid_emb = F.normalize(clip.model.encode_image(overlaid), dim=-1)
        saying = _encode_texts(clip, [shapes.with_overlay(s.caption, overlay) for s in samples])
        said_better.append(((overlaid_emb * saying).sum(1) > (image_emb * saying).sum(1)).float())

    return {
        "held_out_accuracy": float(correct.mean()),
        "overlay_accuracy": float(torch.cat(said_better).mean()),
        "matched_cos": cos_with([(s.colour, s.shape) for s in samples]),
        "mismatched_cos": cos_with([other(shapes.CLASSES, (s.colour, s.shape)) for s in samples]),
        "wrong_colour_cos": cos_with([(other(list(shapes.COLOURS), s.colour), s.shape) for s in samples]),
        "wrong_shape_cos": cos_with([(s.colour, other(shapes.SHAPES, s.shape)) for s in samples]),
    }


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread meanwhile. Its reductions split differently on more threads, so the
    weights (and the demo's funnel) would depend on the machine's cores; on two cores one thread
    also costs ~15% less CPU per step and leaves a core to whatever runs beside the training."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_demo_model(out_dir: Path, seed: int = 0, steps: int = DEFAULT_STEPS, progress: bool = True) -> DemoModelReport:
    """Train from scratch; write ``out_dir/pairlake-demo-tiny.pt`` and ``out_dir/report.json``."""
    with one_thread():
        return _train(Path(out_dir), seed, steps, progress)


def _train(out_dir: Path, seed: int, steps: int, progress: bool) -> DemoModelReport:
    started = time.perf_counter()
    # Taken before training: code edited during a run must not label these weights as current.
    trained_fingerprint = fingerprint(seed, steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the initial weights
    clip = load_clip(ClipConfig(model=MODEL_NAME, pretrained="", device="cpu"), allow_random_init=True)
    model = clip.model
    images, labels, backgrounds, overlays = _render_pool(seed, POOL_SIZE, clip, progress)
    tokens = _caption_tokens(clip.tokenizer)

    # Throwaway linear probes for colour and shape on the image embedding: a direct signal for each
    # attribute, which the contrastive losses only give through whole captions. Not saved.
    probes = torch.nn.ModuleDict(
        {
            "colour": torch.nn.Linear(model.visual.output_dim, len(shapes.COLOURS)),
            "shape": torch.nn.Linear(model.visual.output_dim, len(shapes.SHAPES)),
        }
    )
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *probes.parameters()], lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.98), eps=1e-6
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
        batch_labels, batch_overlays = labels[idx], overlays[idx]
        # An overlaid image's caption says so half the time. Each image also meets one caption a
        # detail away: another colour, another shape, or an overlay it does not carry.
        said = torch.where(torch.rand(BATCH_SIZE, generator=generator) < 0.5, batch_overlays, 0)
        other_colour, other_shape = _hard_negatives(batch_labels, generator)
        other_overlay = torch.randint(1, len(_OVERLAY_NAMES), (BATCH_SIZE,), generator=generator)
        other_overlay = torch.where(other_overlay == batch_overlays, other_overlay % (len(_OVERLAY_NAMES) - 1) + 1, other_overlay)
        # Shape is the hardest detail for a ViT this small: it gets half of the negatives.
        detail = torch.multinomial(_DETAIL_WEIGHTS, BATCH_SIZE, replacement=True, generator=generator)
        negative_labels = torch.where(detail == 0, other_colour, torch.where(detail == 1, other_shape, batch_labels))
        text_labels = torch.cat([batch_labels, negative_labels])
        text_overlays = torch.cat([said, torch.where(detail == 2, other_overlay, said)])
        texts = tokens[text_labels, backgrounds[idx].repeat(2), template.repeat(2), text_overlays]
        image_emb, text_emb, logit_scale = model(_augment(images[idx].float(), generator), texts)
        # A caption fits an image of its class whose overlay it names, or does not mention.
        positive = (batch_labels[:, None] == text_labels[None, :]) & (
            (text_overlays[None, :] == 0) | (text_overlays[None, :] == batch_overlays[:, None])
        )
        cosines = image_emb @ text_emb.T
        loss = (
            _contrastive_loss(logit_scale * cosines[:, :BATCH_SIZE], positive[:, :BATCH_SIZE])
            + _threshold_loss(cosines, positive)
            + F.cross_entropy(probes["colour"](image_emb), batch_labels // len(shapes.SHAPES))
            + F.cross_entropy(probes["shape"](image_emb), batch_labels % len(shapes.SHAPES))
        )
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
        fingerprint=trained_fingerprint,
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


def is_current(out_dir: Path, seed: int = 0, steps: int = DEFAULT_STEPS) -> bool:
    """Whether ``out_dir`` holds the model this code trains from ``seed`` in ``steps``."""
    out_dir = Path(out_dir)
    return (out_dir / CHECKPOINT_NAME).exists() and _stored_fingerprint(out_dir) == fingerprint(seed, steps)


def ensure_demo_model(
    out_dir: Path, seed: int = 0, steps: int = DEFAULT_STEPS, progress: bool = False, force: bool = False
) -> Path:
    """The checkpoint in ``out_dir``, trained first if missing, stale (fingerprint) or ``force``d."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Engineers and test runs share the folder: the lock makes a second caller wait, not retrain.
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if force or not is_current(out_dir, seed, steps):
            train_demo_model(out_dir, seed, steps, progress)
    return out_dir / CHECKPOINT_NAME


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train (or reuse) the demo CLIP model and print its report.")
    parser.add_argument("--out", type=Path, default=Path("infra/demo_model"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--force", action="store_true", help="retrain even when the model in --out is current")
    args = parser.parse_args(argv)
    ensure_demo_model(args.out, args.seed, args.steps, progress=True, force=args.force)
    print(json.dumps(asdict(read_report(args.out)), indent=1))


if __name__ == "__main__":
    main()
