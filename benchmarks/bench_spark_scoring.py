"""CLIP scoring as Spark tasks (``spark_jobs.clip_scores_job``) vs the bare model forward on the same batches.

Bare forward = ``encode_image`` + ``encode_text`` on pre-made tensors at the better torch thread
count, in this process (what the hardware could do if decoding, preprocessing, tokenising, Spark and
the lake were free). Spark = ``score_partitions`` over a lake of 256 px JPEGs in several WARC files,
local mode, end to end: planning, Python workers, decoding, scoring, the Delta commit and the
counts. Each repeat runs the bare forward, then Spark twice: cold (Spark retires Python workers
idle for a minute, so the bare run leaves none: they import torch and load the model again, as a
new session's do) and at once warm (the workers keep their model). Throughput ratio = warm Spark /
bare, median over repeats; the cold run's extra seconds are a run's fixed cost. Prints a table;
writes ``benchmarks/results/spark_scoring.json``.

    .venv/bin/python -m benchmarks.bench_spark_scoring                       # ViT-B-32, 256 images
    .venv/bin/python -m benchmarks.bench_spark_scoring --model pairlake-demo-tiny --images 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

from benchmarks.bench_clip_scoring import best_bare_forward, make_images, premade_batches
from gpu_jobs.clip_model import load_clip
from infra.config import ClipConfig, SparkConfig
from infra.delta_store import Lake, Lineage
from infra.spark import spark_session
from infra.tables import CLIP_SCORES
from spark_jobs.clip_scores_job import score_partitions
from tests.spark_jobs.scoring_lake import write_scoring_lake

RESULTS = Path(__file__).parent / "results" / "spark_scoring.json"


def build_lake(root: Path, images: pa.Table, captions: dict[str, str], files: int) -> tuple[Lake, list[str]]:
    names = [f"bench-{i % files:03d}.warc.gz" for i in range(images.num_rows)]
    images = images.set_column(images.schema.get_field_index("warc_file"), "warc_file", pa.array(names))
    return write_scoring_lake(root, images, captions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--files", type=int, default=8, help="WARC files (data files, so tasks) of the lake")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-spark-scoring-"))
    torch.manual_seed(0)
    clip = load_clip(ClipConfig(model=args.model, pretrained="", device="cpu"), allow_random_init=True)
    checkpoint = work / "weights.pt"
    torch.save(clip.model.state_dict(), checkpoint)
    config = ClipConfig(model=args.model, pretrained="", checkpoint=str(checkpoint), device="auto",
                        batch_size=args.batch_size, workers=0)
    images, captions = make_images(args.images)
    lake, partitions = build_lake(work / "lake", images, captions, args.files)
    batches = premade_batches(clip, images, captions, args.batch_size)
    cores = os.cpu_count() or 1

    def spark_run(spark) -> tuple[float, int]:
        started = time.perf_counter()
        outcome = score_partitions(spark, lake, partitions, config, Lineage(), threshold=0.0)
        assert sum(c["scored"] for c in outcome.counts.values()) == args.images
        return time.perf_counter() - started, outcome.worker_peak_rss_mb

    runs = []  # (bare img/s, cold s, warm s, worker peak MB)
    with spark_session(SparkConfig(master=f"local[{cores}]", app_name="bench-spark-scoring")) as spark:
        for _ in range(args.repeats):
            bare = best_bare_forward(clip, batches).img_s
            (cold, _), (warm, peak) = spark_run(spark), spark_run(spark)
            runs.append((bare, cold, warm, peak))
    assert lake.read(CLIP_SCORES, columns=["uid"]).num_rows == args.images

    bare = statistics.median(b for b, _, _, _ in runs)
    spark_rate = statistics.median(args.images / w for _, _, w, _ in runs)
    ratio = statistics.median(args.images / w / b for b, _, w, _ in runs)
    cold_extra_s = statistics.median(c - w for _, c, w, _ in runs)
    header = (f"{'model':<19} {'imgs':>5} {'files':>5} {'batch':>5} {'bare img/s':>10} {'spark img/s':>11} {'ratio':>6}"
              f" {'cold +s':>7} {'worker MB':>9}")
    print(header)
    print("-" * len(header))
    print(f"{args.model:<19} {args.images:>5} {args.files:>5} {args.batch_size:>5} {bare:>10.1f} {spark_rate:>11.1f}"
          f" {ratio:>6.2f} {cold_extra_s:>7.1f} {max(p for *_, p in runs):>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "spark_scoring", "machine": f"{platform.machine()}, {cores} cores", "model": args.model,
        "images": args.images, "files": args.files, "batch_size": args.batch_size, "runs": runs,
        "bare_img_s": round(bare, 1), "spark_img_s": round(spark_rate, 1), "ratio": round(ratio, 3),
        "cold_extra_s": round(cold_extra_s, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
