"""Webdataset shard export throughput (MB/s of tar written) on 256 px JPEG samples.

    .venv/bin/python -m benchmarks.bench_shard_export [--samples 4000] [--samples-per-shard 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.bench_clip_scoring import make_images  # same photo-like JPEGs as the scoring benchmark
from spark_jobs.shard_export import export_shards

RESULTS = Path(__file__).parent / "results" / "shard_export.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    images, captions = make_images(args.samples)
    n = images.num_rows
    uids = images.column("uid").to_pylist()
    samples = pa.table(
        {
            "uid": images["uid"],
            "url": images["url"],
            "caption": pa.array([captions[u] for u in uids]),
            "similarity": pa.array(np.full(n, 0.31, dtype=np.float32)),
            "width": images["width"],
            "height": images["height"],
            "image": images["image"],
        }
    )
    timings = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for i in range(args.repeats):
            start = time.perf_counter()
            shards = export_shards(samples, Path(tmp) / str(i), args.samples_per_shard)
            timings.append(time.perf_counter() - start)
    tar_bytes = sum(s.bytes for s in shards)
    best = min(timings)
    result = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "samples": n,
        "samples_per_shard": args.samples_per_shard,
        "shards": len(shards),
        "tar_mb": round(tar_bytes / 1e6, 2),
        "best_seconds": round(best, 3),
        "mb_per_s": round(tar_bytes / 1e6 / best, 1),
        "samples_per_s": round(n / best, 1),
        "load_average_1m": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
