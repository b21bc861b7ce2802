"""CLIP scoring throughput: ``score_images`` end to end vs the bare model forward on the same batches.

Bare forward = ``encode_image`` + ``encode_text`` on pre-made tensors (what the model could do if
decoding, preprocessing and tokenising were free), at its better torch thread count (1 or all).
Pipeline = ``score_images`` on an IMAGES table of 256 px JPEGs, including DataLoader start-up and
building the output table. Weights are random (timing only). Sweeps batch size and DataLoader
workers; prints a table and writes ``benchmarks/results/clip_scoring.json``.

    .venv/bin/python -m benchmarks.bench_clip_scoring            # tiny demo model + ViT-B-32
    .venv/bin/python -m benchmarks.bench_clip_scoring --models pairlake-demo-tiny --workers 0,2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from gpu_jobs.clip_model import LoadedClip, load_clip, resolve_device
from gpu_jobs.clip_scoring import score_images
from infra.config import ClipConfig
from infra.tables import IMAGES

RESULTS = Path(__file__).parent / "results" / "clip_scoring.json"
_WORDS = "a photo of the red blue small large dog cat house car tree beach city night old new vintage poster".split()


def make_images(n: int, size: int = 256, seed: int = 0) -> tuple[pa.Table, dict[str, str]]:
    """``n`` photo-like JPEGs (smooth colour fields + noise, quality 95 like the downloader) as IMAGES rows."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + rng.normal(0, 6, (size, size, 3)).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
        blobs.append(buf.getvalue())
    uids = [f"{i:016x}" for i in range(n)]
    now = dt.datetime.now(dt.timezone.utc)
    columns = {
        "uid": uids,
        "url": [f"http://img.example/{u}.jpg" for u in uids],
        "warc_file": ["bench.warc.gz"] * n,
        "status": ["ok"] * n,
        "retryable": [False] * n,
        "attempts": [1] * n,
        "fetched_at": [now] * n,
        "image": blobs,
        "width": [size] * n,
        "height": [size] * n,
    }
    table = pa.Table.from_pydict({f.name: columns.get(f.name, [None] * n) for f in IMAGES.schema}, schema=IMAGES.schema)
    captions = {u: " ".join(rng.choice(_WORDS, size=int(rng.integers(4, 14)))) for u in uids}
    return table, captions


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def premade_batches(clip: LoadedClip, table: pa.Table, captions: dict[str, str], batch_size: int) -> list:
    """The pipeline's batches, preprocessed and tokenised up front and already on the device."""
    images = [clip.preprocess(Image.open(io.BytesIO(b))) for b in table.column("image").to_pylist()]
    texts = [captions[u] for u in table.column("uid").to_pylist()]
    return [
        (
            torch.stack(images[i : i + batch_size]).to(clip.device),
            clip.tokenizer(texts[i : i + batch_size]).to(clip.device),
        )
        for i in range(0, len(images), batch_size)
    ]


@dataclass(frozen=True)
class Timing:
    img_s: float  # wall clock
    cpu_ms_per_img: float  # CPU time of this process and its (reaped) DataLoader workers


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _timed(images: int, run) -> Timing:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    run()
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return Timing(images / wall, 1e3 * cpu / images)


def bare_forward(clip: LoadedClip, batches: list) -> Timing:
    """encode_image + encode_text alone, on the pre-made batches."""
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if clip.device.type == "cuda"
        else contextlib.nullcontext()
    )

    def run() -> None:
        for x, tokens in batches:
            clip.model.encode_image(x)
            clip.model.encode_text(tokens)
        _sync(clip.device)

    with torch.inference_mode(), amp:
        clip.model.encode_image(batches[0][0]), clip.model.encode_text(batches[0][1])  # warm-up
        _sync(clip.device)
        return _timed(sum(len(x) for x, _ in batches), run)


def best_bare_forward(clip: LoadedClip, batches: list) -> Timing:
    """The bare forward at its better intra-op thread count: all cores, or one (on a shared machine a
    single OpenMP thread often beats two that spin-wait on each other)."""
    cores = torch.get_num_threads()
    try:
        timings = []
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            timings.append(bare_forward(clip, batches))
    finally:
        torch.set_num_threads(cores)
    return max(timings, key=lambda t: t.img_s)


def pipeline(clip: LoadedClip, table: pa.Table, captions: dict[str, str], batch_size: int, workers: int) -> Timing:
    """score_images end to end."""
    return _timed(table.num_rows, lambda: score_images(table, captions, clip, batch_size=batch_size, workers=workers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pairlake-demo-tiny,ViT-B-32")
    parser.add_argument("--images", type=int, default=1024, help="images for the tiny model")
    parser.add_argument("--vit-images", type=int, help="images for other models (default: 2048 on CUDA, 64 on CPU)")
    parser.add_argument("--batch-sizes", default="256,64", help="for the tiny model")
    parser.add_argument("--vit-batch-sizes", help="for other models (default: 256 on CUDA, 32 on CPU)")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=2, help="(bare, pipeline) pairs per configuration")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    on_cuda = resolve_device(args.device).type == "cuda"
    args.vit_images = args.vit_images or (2048 if on_cuda else 64)  # ViT-B-32 runs ~3 img/s on 2 CPU cores
    args.vit_batch_sizes = args.vit_batch_sizes or ("256" if on_cuda else "32")

    runs = []
    header = (
        f"{'model':<19} {'imgs':>5} {'batch':>5} {'workers':>7} {'bare img/s':>10} {'pipe img/s':>10} {'ratio':>6}"
        f" {'bare cpu ms/img':>15} {'pipe cpu ms/img':>15}"
    )
    print(header)
    print("-" * len(header))
    for model in args.models.split(","):
        tiny = model == "pairlake-demo-tiny"
        n, batch_sizes = (args.images, args.batch_sizes) if tiny else (args.vit_images, args.vit_batch_sizes)
        torch.manual_seed(0)
        clip = load_clip(ClipConfig(model=model, pretrained="", device=args.device), allow_random_init=True)
        table, captions = make_images(n)
        score_images(table.slice(0, 8), captions, clip, batch_size=8, workers=0)  # warm-up (kernels, BPE cache)
        for batch_size in (int(b) for b in batch_sizes.split(",")):
            batches = premade_batches(clip, table, captions, batch_size)
            for workers in (int(w) for w in args.workers.split(",")):
                # Back-to-back pairs, ratio per pair, median over pairs: on a shared machine the load
                # drifts between configurations much more than within one pair.
                pairs = [
                    (best_bare_forward(clip, batches), pipeline(clip, table, captions, batch_size, workers))
                    for _ in range(args.repeats)
                ]
                bare = statistics.median(b.img_s for b, _ in pairs)
                pipe = statistics.median(p.img_s for _, p in pairs)
                ratio = statistics.median(p.img_s / b.img_s for b, p in pairs)
                bare_cpu = statistics.median(b.cpu_ms_per_img for b, _ in pairs)
                pipe_cpu = statistics.median(p.cpu_ms_per_img for _, p in pairs)
                runs.append(
                    dict(
                        model=model,
                        images=n,
                        batch_size=batch_size,
                        workers=workers,
                        bare_img_s=round(bare, 1),
                        pipeline_img_s=round(pipe, 1),
                        ratio=round(ratio, 3),
                        bare_cpu_ms_per_img=round(bare_cpu, 2),
                        pipeline_cpu_ms_per_img=round(pipe_cpu, 2),
                    )
                )
                print(
                    f"{model:<19} {n:>5} {batch_size:>5} {workers:>7} {bare:>10.1f} {pipe:>10.1f} {ratio:>6.2f}"
                    f" {bare_cpu:>15.2f} {pipe_cpu:>15.2f}",
                    flush=True,
                )

    result = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "device": str(clip.device),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
