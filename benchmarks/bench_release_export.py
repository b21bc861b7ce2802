"""Release export as Spark tasks: a curated variant of N samples (small real JPEGs) written as
webdataset shards, image bytes joined by uid; wall, CPU seconds and peak RSS of the driver and of
the Spark processes, at each size.

    .venv/bin/python -m benchmarks.bench_release_export [--samples 100000,1000000] [--samples-per-shard 10000]

The lake is built in streamed batches (never the whole table in memory): ``images`` over
``--files`` WARC files, ``curated`` with every sample in variant "safe".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from benchmarks.bench_clip_scoring import make_images
from benchmarks.process_tree import peak_rss_mb, reset_peak_rss, rss_mb, tree_cpu_seconds, tree_peak_rss_mb
from infra.config import SparkConfig
from infra.delta_store import Lake, Lineage
from infra.spark import spark_session
from infra.tables import CURATED, IMAGES
from spark_jobs.shard_export_job import export_variant_shards

RESULTS = Path(__file__).parent / "results" / "release_export.json"
ROWS_PER_BATCH = 20_000


def _uid(i: int) -> str:
    return hashlib.sha256(f"bench pair {i}".encode()).hexdigest()[:32]


def _image_batches(n: int, files: int, pool: list[bytes]) -> Iterator[pa.RecordBatch]:
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    for start in range(0, n, ROWS_PER_BATCH):
        idx = range(start, min(n, start + ROWS_PER_BATCH))
        k = len(idx)
        columns = {
            "uid": [_uid(i) for i in idx],
            "url": [f"http://h{i % 997}.example/{i}.jpg" for i in idx],
            "warc_file": [f"bench-{i % files:04d}.warc.gz" for i in idx],
            "status": ["ok"] * k, "retryable": [False] * k, "attempts": [1] * k, "fetched_at": [now] * k,
            "image": [pool[i % len(pool)] for i in idx], "width": [48] * k, "height": [48] * k,
        }
        yield pa.RecordBatch.from_pydict({f.name: columns.get(f.name, [None] * k) for f in IMAGES.schema},
                                         schema=IMAGES.schema)


def _curated_batches(n: int, files: int, rng: np.random.Generator) -> Iterator[pa.RecordBatch]:
    for start in range(0, n, ROWS_PER_BATCH):
        idx = range(start, min(n, start + ROWS_PER_BATCH))
        k = len(idx)
        columns = {
            "variant": ["safe"] * k, "uid": [_uid(i) for i in idx],
            "warc_file": [f"bench-{i % files:04d}.warc.gz" for i in idx],
            "url": [f"http://h{i % 997}.example/{i}.jpg" for i in idx],
            "caption": [f"a photo number {i} of a small thing" for i in idx], "language": ["en"] * k,
            "similarity": rng.uniform(0.28, 0.4, k).astype(np.float32), "model_id": ["bench"] * k,
            "width": [48] * k, "height": [48] * k, "punsafe": rng.uniform(0, 0.1, k).astype(np.float32),
            "cluster_size": [1] * k,
        }
        yield pa.RecordBatch.from_pydict({f.name: columns.get(f.name, [None] * k) for f in CURATED.schema},
                                         schema=CURATED.schema)


def build_lake(root: Path, n: int, files: int) -> Lake:
    images, _ = make_images(256, size=48)
    pool = images["image"].to_pylist()
    lake = Lake(str(root))
    warcs = [f"bench-{i:04d}.warc.gz" for i in range(files)]
    lake.rewrite(IMAGES, pa.RecordBatchReader.from_batches(IMAGES.schema, _image_batches(n, files, pool)),
                 Lineage(), warcs)
    lake.rewrite(CURATED, pa.RecordBatchReader.from_batches(CURATED.schema, _curated_batches(
        n, files, np.random.default_rng(0))), Lineage(), ["safe"])
    return lake


def measure(spark, lake: Lake, out: Path, samples_per_shard: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    reset_peak_rss()  # the driver's peak of the export alone, not of building the lake
    before = rss_mb()
    cpu0, wall0 = tree_cpu_seconds(), time.perf_counter()
    shards = export_variant_shards(spark, lake, "safe", str(out), samples_per_shard)
    wall, cpu = time.perf_counter() - wall0, tree_cpu_seconds() - cpu0
    peaks = tree_peak_rss_mb()
    return {
        "seconds": round(wall, 1), "cpu_s": round(cpu, 1),
        "samples": sum(s.samples for s in shards), "shards": len(shards),
        "tar_gb": round(sum(s.bytes for s in shards) / 1e9, 2),
        "samples_per_s": round(sum(s.samples for s in shards) / wall),
        "driver_rss_growth_mb": round(peak_rss_mb() - before),
        "jvm_peak_rss_mb": round(peaks.get("java", 0)),
        "python_worker_peak_rss_mb": round(peaks.get("python", 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--samples-per-shard", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=200, help="WARC files (partitions of images)")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the lake (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    sizes = [int(s) for s in args.samples.split(",")]
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-release-export-") as tmp:
        for n in sizes:
            started = time.perf_counter()
            lake = build_lake(Path(tmp) / f"lake-{n}", n, args.files)
            built = time.perf_counter() - started
            # A fresh session per size: each size's peaks are its own.
            with spark_session(SparkConfig(master=f"local[{cores}]", app_name="bench-release-export")) as spark:
                row = {"size": n, "lake_build_s": round(built, 1),
                       **measure(spark, lake, Path(tmp) / f"shards-{n}", args.samples_per_shard)}
            assert row["samples"] == n, row
            rows.append(row)
            shutil.rmtree(Path(tmp) / f"lake-{n}")
            shutil.rmtree(Path(tmp) / f"shards-{n}")
            print(f"{n:>10,} samples  {row['shards']:>4} shards  {row['tar_gb']:>6.2f} GB  {row['seconds']:>7.1f} s wall  "
                  f"{row['cpu_s']:>7.1f} s CPU  {row['samples_per_s']:>7,}/s  driver +{row['driver_rss_growth_mb']} MB  "
                  f"JVM {row['jvm_peak_rss_mb']} MB  Python worker {row['python_worker_peak_rss_mb']} MB", flush=True)
    result = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {cores} cores", "spark_master": f"local[{cores}]",
        "samples_per_shard": args.samples_per_shard, "files": args.files, "image_px": 48,
        "load_average_1m": os.getloadavg()[0], "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
