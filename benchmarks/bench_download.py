"""Benchmark the download stage: ``download_batch`` images/s against a local ImageServer.

Generates (once, cached) ``--unique`` photo-like JPEGs of 300–1200 px per side and serves ``--n``
URLs cycling over them from a separate process (``--serve``), so that serving does not share this
process's GIL, as a remote host would not. Times ``download_batch`` at 256 px border resize (the
demo config, with the per-host limit raised to the global one since a single local host stands in
for many), then fetching alone (same Fetcher and limits, bodies not decoded) and decode+resize
alone over the same bodies, on one thread and on the decode pool's threads. Prints a table and
writes ``benchmarks/results/download.json``.

    .venv/bin/python -m benchmarks.bench_download [--n 2000] [--unique 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import platform
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw

from infra.config import DownloadConfig, load_config
from infra.image_server import ImageServer, Resource
from spark_jobs.download import download_batch
from spark_jobs.download.fetcher import Fetcher
from spark_jobs.download.resizer import resize_image

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "bench_download"
RESULTS = ROOT / "benchmarks" / "results" / "download.json"
GENERATOR_VERSION = 1  # bump when the generated images change, to invalidate the cache


def _photo(rng: random.Random, width: int, height: int) -> bytes:
    """Gradients, shapes and grain: compresses like a photo, not like a flat test card."""
    vertical = Image.linear_gradient("L").resize((width, height))
    horizontal = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height))
    img = Image.merge("RGB", (vertical, horizontal, Image.new("L", (width, height), rng.randrange(256))))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(5, 25)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(10, width // 2), y0 + rng.randint(10, height // 2))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height)).convert("RGB")
    img = Image.blend(img, grain, 0.08)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def cached_images(unique: int, seed: int = 0) -> list[Path]:
    folder = CACHE_DIR / f"images-v{GENERATOR_VERSION}-{unique}-{seed}"
    paths = [folder / f"{i:05d}.jpg" for i in range(unique)]
    if not all(p.exists() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        for path in paths:
            width = rng.randint(300, 1200)
            height = min(1200, max(300, round(width * rng.uniform(0.5, 2.0))))
            path.write_bytes(_photo(rng, width, height))
    return paths


def serve(folder: Path, n: int) -> None:
    """The --serve mode: ``/img/<i>.jpg`` for i < n, cycling over the folder's images."""
    bodies = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    with ImageServer({f"/img/{i}.jpg": Resource(bodies[i % len(bodies)]) for i in range(n)}) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


def _fetch_rate(urls: list[str], config: DownloadConfig) -> float:
    """Network only: the same Fetcher and limits, bodies dropped undecoded."""

    async def fetch_all() -> None:
        async with Fetcher(config) as fetcher:
            await asyncio.gather(*(fetcher.fetch(u) for u in urls))

    start = time.perf_counter()
    asyncio.run(fetch_all())
    return len(urls) / (time.perf_counter() - start)


def _decode_rate(bodies: list[bytes], config: DownloadConfig, threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for body in bodies:
            resize_image(body, config)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda b: resize_image(b, config), bodies))
    return len(bodies) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="URLs per download_batch")
    parser.add_argument("--unique", type=int, default=200, help="distinct images behind them")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.n)
        return

    paths = cached_images(args.unique)
    base = load_config().download
    config = dataclasses.replace(base, image_size=256, resize_mode="border", per_host_concurrency=base.concurrency)
    threads = min(4, os.cpu_count() or 1)  # download_batch's default decode pool
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_download", "--serve", str(paths[0].parent), "--n", str(args.n)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        config = dataclasses.replace(config, allow_hosts=(url.removeprefix("http://"),))  # its loopback port only
        table = pa.table(
            {
                "uid": [str(i) for i in range(args.n)],
                "url": [f"{url}/img/{i}.jpg" for i in range(args.n)],
                "warc_file": ["bench"] * args.n,
            }
        )
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = download_batch(table, config)
            runs.append(time.perf_counter() - start)
        fetch_rate = _fetch_rate(table.column("url").to_pylist(), config)
        statuses = out.column("status").to_pylist()
        errors = sorted({e for e in out.column("error").to_pylist() if e})
    finally:
        server.stdin.close()
        server.wait(timeout=30)

    bodies = [p.read_bytes() for p in paths]
    bodies = [bodies[i % len(bodies)] for i in range(min(args.n, 1000))]
    sizes = [Image.open(io.BytesIO(b)).size for b in bodies]
    best = min(runs)
    results = {
        "download_batch_images_per_s": round(args.n / best, 1),
        "download_batch_seconds": [round(r, 2) for r in runs],
        "ok": statuses.count("ok"),
        "failed": statuses.count("failed"),
        "errors": errors,
        "fetch_only_images_per_s": round(fetch_rate, 1),
        "decode_resize_images_per_s_1_thread": round(_decode_rate(bodies, config, 1), 1),
        f"decode_resize_images_per_s_{threads}_threads": round(_decode_rate(bodies, config, threads), 1),
    }
    report = {
        "benchmark": "download",
        "n_urls": args.n,
        "unique_images": args.unique,
        "mean_image_bytes": round(sum(map(len, bodies)) / len(bodies)),
        "mean_megapixels": round(sum(w * h for w, h in sizes) / len(sizes) / 1e6, 3),
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "allow_hosts"},
        "decode_threads": threads,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "results": results,
    }
    print(f"{'measure':<42} {'value':>12}")
    for key, value in results.items():
        print(f"{key:<42} {value!s:>12}")
    print(f"(n={args.n}, {args.unique} distinct JPEGs, mean {report['mean_image_bytes'] / 1e3:.0f} kB, "
          f"{report['mean_megapixels']} MP; load avg {report['machine']['load_avg_1m']:.1f} on {os.cpu_count()} CPUs)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
