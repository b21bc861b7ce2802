"""Benchmark download + resize side by side: pairlake's ``download_batch`` vs img2dataset 1.47.0.

Both sides fetch the same ``--urls`` URLs (cycling over ``--images`` distinct photo-like images,
1024-2048 px wide, mean ~190 kB: mostly JPEGs, a few WebPs and PNGs with alpha) from the same
loopback server, and resize them the same way (pairlake's DownloadConfig defaults: 256 px, border,
JPEG quality 95; the same size, aspect and area limits given to img2dataset). Every side runs as a
whole separate process under the same CPU affinity; the server runs in a process of its own (its
CPU is counted on neither side, but reported). CPU seconds come from the kernel (``wait4`` rusage
of the process and every child it reaped: img2dataset's worker pool and logger process included).

Sides, run in rotating order in each of ``--repeat`` rounds:

* ``pairlake``: ``download_batch`` on an Arrow table of the URLs; its output is the Arrow table in
  memory (no file written);
* ``img2dataset:dummy``: img2dataset's ``output_format=dummy`` (writes nothing: the most favourable
  to img2dataset, and the comparison the headline ratio uses);
* ``img2dataset:webdataset`` (or ``:parquet``): as users run it, writing shards to a fresh folder.

Also measured: each side's process start and import cost (a run of 10 URLs), and a breakdown of
where the CPU goes: decode+resize+encode alone per image (one thread, in process) on each side, and
fetching alone (pairlake's Fetcher with bodies dropped; img2dataset with ``disable_all_reencoding``).
Prints a table and writes ``benchmarks/results/download.json``.

    .venv/bin/python -m benchmarks.bench_download [--urls 12000] [--images 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.machine import describe

if TYPE_CHECKING:  # the peers module is imported where used: the --worker and --serve modes need none of it
    from benchmarks.peers import Measured

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "bench_download"
RESULTS = ROOT / "benchmarks" / "results" / "download.json"
GENERATOR_VERSION = 2  # bump when the generated images change, to invalidate the cache
PEER = "img2dataset-1.47.0"
STARTUP_URLS = 10
PROJECT_AT = 12000  # the size: runs at fewer URLs also project their figures to it
CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


# --- images -------------------------------------------------------------------------------------


def _photo(rng: random.Random, width: int, height: int):
    """Gradients, blurred shapes, a coarse texture and fine grain: a JPEG of it is about as large as
    a photo of the same size (~0.08 bytes per pixel at quality 80), not like a flat test card."""
    from PIL import Image, ImageDraw, ImageFilter

    vertical = Image.linear_gradient("L").resize((width, height))
    horizontal = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height))
    img = Image.merge("RGB", (vertical, horizontal, Image.new("L", (width, height), rng.randrange(256))))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(8, 30)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            x0, y0 = rng.randrange(width), rng.randrange(height)
            draw.ellipse((x0, y0, x0 + rng.randint(10, width // 2), y0 + rng.randint(10, height // 2)), fill=colour)
        else:
            points = [(rng.randrange(width), rng.randrange(height)) for _ in range(rng.randint(3, 6))]
            draw.polygon(points, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)))
    tw, th = max(1, width // 8), max(1, height // 8)
    texture = Image.frombytes("L", (tw, th), rng.randbytes(tw * th))
    img = Image.blend(img, texture.resize((width, height), Image.Resampling.BICUBIC).convert("RGB"), 0.1)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height)).convert("RGB")
    return Image.blend(img, grain, 0.02)


def _graphic(rng: random.Random, width: int, height: int):
    """A logo-like RGBA graphic: flat shapes on a transparent background (the PNGs of a crawl)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(5, 15)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(20, width // 2), y0 + rng.randint(20, height // 2))
        draw.rounded_rectangle(box, radius=rng.randint(0, 30), fill=(*(rng.randrange(256) for _ in range(3)), 255))
    return img


def cached_images(count: int, seed: int = 0) -> list[Path]:
    """``count`` images (generated once, cached): 90% JPEG photos 1024-2048 px wide (quality 80),
    5% WebP photos (quality 80), 5% RGBA PNG graphics 512-1024 px wide."""
    folder = CACHE_DIR / f"images-v{GENERATOR_VERSION}-{count}-{seed}"
    rng = random.Random(seed)
    kinds = [".jpg"] * count
    for i in range(count):
        if i % 20 == 10:
            kinds[i] = ".webp"
        elif i % 20 == 19:
            kinds[i] = ".png"
    paths = [folder / f"{i:05d}{kind}" for i, kind in enumerate(kinds)]
    if all(p.exists() for p in paths):
        return paths
    print(f"generating {count} images into {folder.relative_to(ROOT)} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        buf = io.BytesIO()
        if path.suffix == ".png":
            width = rng.randint(512, 1024)
            _graphic(rng, width, round(width * rng.choice([0.5, 0.75, 1.0]))).save(buf, format="PNG")
        else:
            width = rng.randint(1024, 2048)
            height = round(width * rng.choice([0.5625, 0.667, 0.75, 1.0, 1.333, 1.5]))
            fmt, quality = ("WEBP", 80) if path.suffix == ".webp" else ("JPEG", 80)
            _photo(rng, width, height).save(buf, format=fmt, quality=quality)
        path.write_bytes(buf.getvalue())
    return paths


# --- the server process -------------------------------------------------------------------------


def serve(folder: Path, n: int, ports: int = 1) -> None:
    """The --serve mode: ``/img/<i>.<ext>`` for i < n is the folder's image i % count; everything
    else 404. One ImageServer per port (each a host to a downloader), with a deep backlog
    (img2dataset opens one connection per image). Prints its URLs on one line; then, per line on
    stdin, a JSON line with the requests served and its CPU seconds so far; stops at EOF."""
    from infra.image_server import ImageServer, Resource

    files = sorted(p for p in folder.iterdir() if p.suffix in CONTENT_TYPES)
    bodies = [Resource(p.read_bytes(), CONTENT_TYPES[p.suffix]) for p in files]
    resources = {f"/img/{i}{files[i % len(files)].suffix}": bodies[i % len(files)] for i in range(n)}
    servers = [ImageServer(resources, backlog=4096) for _ in range(ports)]
    with contextlib.ExitStack() as stack:
        print(" ".join(stack.enter_context(server).url for server in servers), flush=True)
        for _ in sys.stdin:
            logs = [entry for server in servers for entry in server.access_log]
            missing = sum(path not in resources for _, path in logs)
            print(json.dumps({"requests": len(logs), "not_found": missing, "cpu_s": time.process_time()}), flush=True)


class Server:
    """The --serve process: ``urls`` (one per port), ``stats()`` (requests and CPU so far), ``close()``."""

    def __init__(self, folder: Path, n: int, ports: int = 1):
        command = [sys.executable, "-m", "benchmarks.bench_download", "--serve", str(folder), "--urls", str(n),
                   "--ports", str(ports)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.urls = self.process.stdout.readline().split()
        if len(self.urls) != ports or not all(u.startswith("http://") for u in self.urls):
            self.process.kill()
            raise RuntimeError("the image server did not start")
        self.url = self.urls[0]

    def stats(self) -> dict:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


# --- pairlake's side, as a whole process ------------------------------------------------------------


def pairlake_worker(args: argparse.Namespace) -> None:
    """The --worker mode: download_batch (or, with --fetch-only, pairlake's Fetcher alone) over the
    URLs of --url-file; prints one JSON line of counts and in-process timings."""
    started_cpu, started = time.process_time(), time.perf_counter()
    import asyncio
    from collections import Counter

    import pyarrow as pa

    from infra.config import DownloadConfig
    from spark_jobs.download import download_batch
    from spark_jobs.download.fetcher import Fetcher

    fields = json.loads(args.config)
    config = DownloadConfig(**{**fields, "allow_hosts": tuple(fields["allow_hosts"])})
    urls = Path(args.url_file).read_text().split()
    imported_cpu, imported = time.process_time(), time.perf_counter()
    report: dict = {"import_cpu_s": imported_cpu - started_cpu, "import_wall_s": imported - started}
    if args.fetch_only:
        async def fetch_all() -> list:
            window = asyncio.Semaphore(2 * config.concurrency)  # as download_batch bounds its tasks

            async def one(url: str):
                async with window:
                    result = await fetcher.fetch(url)
                    return result.error or "ok"

            async with Fetcher(config) as fetcher:
                return await asyncio.gather(*(one(u) for u in urls))

        outcomes = Counter(asyncio.run(fetch_all()))
        report.update(ok=outcomes.pop("ok", 0), failed=sum(outcomes.values()), errors=dict(outcomes))
    else:
        table = pa.table({"uid": [str(i) for i in range(len(urls))], "url": urls, "warc_file": ["bench"] * len(urls)})
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        out = download_batch(table, config, decode_threads=args.decode_threads)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        statuses = Counter(out.column("status").to_pylist())
        errors = Counter(e for e in out.column("error").to_pylist() if e)
        report.update(ok=statuses["ok"], failed=statuses["failed"], errors=dict(errors),
                      output_bytes=out.nbytes, output_image_bytes=out.column("image").nbytes)
    report.update(batch_cpu_s=time.process_time() - imported_cpu, batch_wall_s=time.perf_counter() - imported)
    print(json.dumps(report), flush=True)


# --- running the sides --------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    cpus: str | None
    processes: int  # img2dataset processes_count
    threads: int  # img2dataset thread_count
    shard_size: int  # img2dataset number_sample_per_shard
    decode_threads: int | None  # download_batch's decode pool (None: its default)
    pairlake_config: dict
    workdir: Path


def _taskset(settings: Settings, command: list[str]) -> list[str]:
    return ["taskset", "-c", settings.cpus, *command] if settings.cpus else command


def run_pairlake(settings: Settings, url_file: Path, *, fetch_only: bool = False, profile: Path | None = None) -> dict:
    from benchmarks.peers import run_measured

    command = [sys.executable, "-m", "benchmarks.bench_download", "--worker", "pairlake", "--url-file", str(url_file),
               "--config", json.dumps(settings.pairlake_config)]
    if settings.decode_threads:
        command += ["--decode-threads", str(settings.decode_threads)]
    if fetch_only:
        command.append("--fetch-only")
    if profile:
        command += ["--profile-to", str(profile)]
    run = run_measured(_taskset(settings, command), cwd=ROOT)
    inner = json.loads(run.stdout.strip().splitlines()[-1])
    return {"cpu_s": run.cpu_s, "wall_s": run.wall_s, "ok": inner.pop("ok"), "failed": inner.pop("failed"),
            "errors": inner.pop("errors"), "inner": inner}


def img2dataset_flags(settings: Settings, url_file: Path, out: Path, output_format: str, *,
                      no_reencode: bool = False) -> list[str]:
    """The settings as img2dataset's command-line flags: its CLI is fire over ``download``, so a peer
    script handing them to ``download`` through fire reads them alike."""
    cfg = settings.pairlake_config
    flags = [
        f"--url_list={url_file}", "--input_format=txt", f"--output_folder={out}",
        f"--output_format={output_format}", f"--image_size={cfg['image_size']}", f"--resize_mode={cfg['resize_mode']}",
        f"--encode_format={cfg['encode_format']}", f"--encode_quality={cfg['encode_quality']}",
        f"--min_image_size={cfg['min_image_size']}", f"--max_aspect_ratio={float(cfg['max_aspect_ratio'])}",
        f"--max_image_area={cfg['max_image_pixels']}", f"--timeout={round(cfg['timeout_s'])}",
        f"--retries={cfg['retries']}", f"--processes_count={settings.processes}",
        f"--thread_count={settings.threads}", f"--number_sample_per_shard={settings.shard_size}",
        "--extract_exif=False", "--compute_hash=sha256", "--enable_wandb=False",
    ]
    if no_reencode:
        flags.append("--disable_all_reencoding=True")
    return flags


def run_img2dataset_process(settings: Settings, program: list[str], url_file: Path, output_format: str, *,
                            no_reencode: bool = False) -> tuple[Measured, dict]:
    """``program`` (img2dataset's CLI, or a peer script taking its flags) on the settings' flags, into a
    fresh folder: the measured process, and the outcome its shards' stats files give."""
    from benchmarks.peers import run_measured

    out = Path(tempfile.mkdtemp(prefix="i2d-", dir=settings.workdir)) / "out"  # fresh: a repeat would skip shards
    try:
        command = [*program, *img2dataset_flags(settings, url_file, out, output_format, no_reencode=no_reencode)]
        run = run_measured(_taskset(settings, command))
        stats = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
        written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.name.endswith(".json"))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    errors: dict[str, int] = {}
    for shard in stats:
        for reason, count in shard["status_dict"].items():
            if reason != "success":
                errors[reason] = errors.get(reason, 0) + count
    return run, {"ok": sum(s["successes"] for s in stats),
                 "failed": sum(s["failed_to_download"] + s["failed_to_resize"] for s in stats), "errors": errors,
                 "shards": len(stats), "bytes_written": written}


def run_img2dataset(settings: Settings, url_file: Path, output_format: str, *, no_reencode: bool = False) -> dict:
    from benchmarks.peers import peer_python

    cli = str(peer_python(PEER).parent / "img2dataset")
    run, outcome = run_img2dataset_process(settings, [cli], url_file, output_format, no_reencode=no_reencode)
    return {"cpu_s": run.cpu_s, "wall_s": run.wall_s, **outcome}


def run_side(side: str, settings: Settings, url_file: Path) -> dict:
    if side == "pairlake":
        return run_pairlake(settings, url_file)
    return run_img2dataset(settings, url_file, side.split(":", 1)[1])


def _write_urls(path: Path, base: str, paths: list[Path], n: int) -> Path:
    path.write_text("".join(f"{base}/img/{i}{paths[i % len(paths)].suffix}\n" for i in range(n)))
    return path


# --- breakdown: resize alone, per image, one thread -------------------------------------------------

_I2D_RESIZE = """
import io, json, sys, time, hashlib
from pathlib import Path
from img2dataset.resizer import Resizer
folder, rounds, cfg = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
resizer = Resizer(image_size=cfg["image_size"], resize_mode=cfg["resize_mode"], resize_only_if_bigger=False,
                  upscale_interpolation="lanczos", downscale_interpolation="area",
                  encode_quality=cfg["encode_quality"], encode_format=cfg["encode_format"], skip_reencode=False,
                  disable_all_reencoding=False, min_image_size=cfg["min_image_size"],
                  max_image_area=cfg["max_image_pixels"], max_aspect_ratio=cfg["max_aspect_ratio"])
files = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png", ".webp"))
ok, per_kind, total = 0, {}, 0.0
for path in files:
    body = path.read_bytes()
    start = time.process_time()
    for _ in range(rounds):
        ok += resizer(io.BytesIO(body))[-1] is None
    cpu = (time.process_time() - start) / rounds
    total += cpu
    per_kind.setdefault(path.suffix, []).append(cpu)
start = time.process_time()
for _ in range(rounds):
    for path in files:
        hashlib.sha256(path.read_bytes()).hexdigest()
digest = (time.process_time() - start) / (rounds * len(files))
print(json.dumps({"resize_cpu_ms": total / len(files) * 1e3, "hash_cpu_ms": digest * 1e3, "ok": ok // rounds,
                  "per_kind_ms": {k: sum(v) / len(v) * 1e3 for k, v in per_kind.items()}}))
"""


def resize_breakdown(folder: Path, settings: Settings, rounds: int) -> dict:
    """CPU milliseconds per image of decode+resize+encode alone (one thread, in process), and of the
    digests each side computes over the original bytes."""
    import hashlib

    from benchmarks.peers import peer_env, peer_python
    from infra.config import DownloadConfig
    from spark_jobs.download.downloader import DIGESTS
    from spark_jobs.download.resizer import resize_image

    cfg = settings.pairlake_config
    config = DownloadConfig(**{**cfg, "allow_hosts": tuple(cfg["allow_hosts"])})
    files = sorted(p for p in folder.iterdir() if p.suffix in CONTENT_TYPES)
    per_kind: dict[str, list[float]] = {}
    for path in files:
        body = path.read_bytes()
        start = time.process_time()
        for _ in range(rounds):
            resize_image(body, config)
        per_kind.setdefault(path.suffix, []).append((time.process_time() - start) / rounds)
    resize = sum(map(sum, per_kind.values())) / len(files)
    start = time.process_time()
    for _ in range(rounds):
        for path in files:
            body = path.read_bytes()
            for name in DIGESTS:
                hashlib.new(name, body).hexdigest()
    digest = (time.process_time() - start) / (rounds * len(files))
    peer = subprocess.run(_taskset(settings, [str(peer_python(PEER)), "-c", _I2D_RESIZE, str(folder), str(rounds),
                                              json.dumps(cfg)]),
                          capture_output=True, text=True, env=peer_env(), check=True)
    i2d = json.loads(peer.stdout.strip().splitlines()[-1])
    return {
        "pairlake_resize_cpu_ms": round(resize * 1e3, 2),
        f"pairlake_hash_cpu_ms ({'+'.join(DIGESTS)})": round(digest * 1e3, 2),
        "img2dataset_resize_cpu_ms": round(i2d["resize_cpu_ms"], 2),
        "img2dataset_hash_cpu_ms (sha256)": round(i2d["hash_cpu_ms"], 2),
        "per_kind_resize_cpu_ms": {
            kind: {"images": len(cpus), "pairlake": round(sum(cpus) / len(cpus) * 1e3, 2),
                   "img2dataset": round(i2d["per_kind_ms"][kind], 2),
                   "ratio": round(i2d["per_kind_ms"][kind] / (sum(cpus) / len(cpus) * 1e3), 2)}
            for kind, cpus in per_kind.items()
        },
        "images": len(files),
        "rounds": rounds,
    }


# --- report -------------------------------------------------------------------------------------


def _versions() -> dict:
    from importlib.metadata import version

    from benchmarks.peers import peer_python

    ours = {name: version(name) for name in ("pillow", "aiohttp", "pyarrow")}
    probe = ("import json; from importlib.metadata import version as v; print(json.dumps({n: v(n) for n in "
             "('img2dataset', 'opencv-python-headless', 'numpy', 'albumentations', 'pyarrow', 'webdataset')}))")
    peer = subprocess.run([str(peer_python(PEER)), "-c", probe], capture_output=True, text=True, check=True)
    return {"python": platform.python_version(), "pairlake_deps": ours, "img2dataset_env": json.loads(peer.stdout)}


def _rates(run: dict) -> dict:
    return {**run, "images_per_cpu_s": run["ok"] / run["cpu_s"] if run["cpu_s"] else 0.0,
            "images_per_s": run["ok"] / run["wall_s"] if run["wall_s"] else 0.0}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=12000, help="URLs per run")
    parser.add_argument("--images", type=int, default=200, help="distinct images behind them")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each runs every side once, order rotating")
    parser.add_argument("--sides", default="pairlake,img2dataset:dummy,img2dataset:webdataset",
                        help="comma-separated: pairlake, img2dataset:dummy|webdataset|parquet|files")
    parser.add_argument("--cpus", help="taskset CPU list for every side (default: this process's affinity)")
    parser.add_argument("--processes", type=int, help="img2dataset processes_count (default: the CPUs allowed)")
    parser.add_argument("--threads", type=int, default=64, help="img2dataset thread_count per process")
    parser.add_argument("--shard-size", type=int, default=1000, help="img2dataset number_sample_per_shard")
    parser.add_argument("--concurrency", type=int,
                        help="pairlake's global and per-host concurrency (default: processes x threads)")
    parser.add_argument("--decode-threads", type=int, help="download_batch's decode pool (default: its own)")
    parser.add_argument("--breakdown-urls", type=int, default=2000, help="URLs for the fetch-only runs; 0: skip")
    parser.add_argument("--profile", action="store_true", help="also cProfile one pairlake run (not timed)")
    # internal modes
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ports", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["pairlake"], help=argparse.SUPPRESS)
    parser.add_argument("--url-file", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--fetch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", dest="profile_path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.urls, args.ports)
        return
    if args.worker:
        args.profile = args.profile_path
        pairlake_worker(args)
        return

    from infra.config import load_config

    sides = args.sides.split(",")
    cpus_allowed = len(os.sched_getaffinity(0)) if not args.cpus else len(_parse_cpus(args.cpus))
    processes = args.processes or cpus_allowed
    base = load_config().download
    concurrency = args.concurrency or processes * args.threads
    config = dataclasses.replace(base, concurrency=concurrency, per_host_concurrency=concurrency)
    paths = cached_images(args.images)
    bodies = [p.read_bytes() for p in paths]
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-download-"))
    server = Server(paths[0].parent, max(args.urls, STARTUP_URLS, args.breakdown_urls))
    try:
        config = dataclasses.replace(config, allow_hosts=(server.url.removeprefix("http://"),))  # its port only
        fields = {**dataclasses.asdict(config), "allow_hosts": list(config.allow_hosts)}
        settings = Settings(args.cpus, processes, args.threads, args.shard_size, args.decode_threads, fields, workdir)
        urls = _write_urls(workdir / "urls.txt", server.url, paths, args.urls)
        few = _write_urls(workdir / "startup.txt", server.url, paths, STARTUP_URLS)

        def measured(side: str, url_file: Path, **kwargs) -> dict:
            before, load = server.stats(), os.getloadavg()[0]
            if side.startswith("pairlake"):
                run = run_pairlake(settings, url_file, **kwargs)
            else:
                run = run_img2dataset(settings, url_file, side.split(":", 1)[1], **kwargs)
            after = server.stats()
            run.update(server_requests=after["requests"] - before["requests"],
                       server_cpu_s=round(after["cpu_s"] - before["cpu_s"], 2), load_1m=load)
            return _rates(run)

        print(f"{len(sides)} sides x {args.repeat} rounds over {args.urls} URLs; startup runs of {STARTUP_URLS}",
              flush=True)
        startup = {side: measured(side, few) for side in sides}
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for round_ in range(args.repeat):
            for side in sides[round_ % len(sides):] + sides[:round_ % len(sides)]:
                runs[side].append(measured(side, urls))
                r = runs[side][-1]
                print(f"  round {round_ + 1} {side:<24} ok {r['ok']:>6} failed {r['failed']:>4} "
                      f"cpu {r['cpu_s']:7.1f}s wall {r['wall_s']:6.1f}s  {r['images_per_cpu_s']:6.1f} img/cpu-s",
                      flush=True)
        breakdown: dict = {}
        if args.breakdown_urls:
            fetch_urls = _write_urls(workdir / "fetch.txt", server.url, paths, args.breakdown_urls)
            breakdown["fetch_only"] = {
                "urls": args.breakdown_urls,
                "pairlake (Fetcher, bodies dropped)": measured("pairlake", fetch_urls, fetch_only=True),
                "img2dataset (dummy, disable_all_reencoding)": measured("img2dataset:dummy", fetch_urls,
                                                                        no_reencode=True),
            }
        if args.profile:
            profile_path = RESULTS.parent / "download_pairlake.prof"
            run_pairlake(settings, urls, profile=profile_path)
            breakdown["pairlake_profile"] = str(profile_path.relative_to(ROOT))
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    breakdown["resize_alone"] = resize_breakdown(paths[0].parent, settings, rounds=2)
    load_after = os.getloadavg()
    report = _report(args, sides, settings, config, paths, bodies, startup, runs, breakdown, load_before, load_after)
    _print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def _parse_cpus(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _report(args, sides, settings, config, paths, bodies, startup, runs, breakdown, load_before, load_after) -> dict:
    from PIL import Image

    sizes = [Image.open(io.BytesIO(b)).size for b in bodies]
    kinds: dict[str, int] = {}
    for p in paths:
        kinds[p.suffix] = kinds.get(p.suffix, 0) + 1
    summary = {}
    for side in sides:
        side_runs = runs[side]
        start = startup[side]
        cpu, wall, ok = _median(side_runs, "cpu_s"), _median(side_runs, "wall_s"), _median(side_runs, "ok")
        marginal = (cpu - start["cpu_s"]) / max(1, ok - start["ok"])  # CPU per image past the fixed start cost
        summary[side] = {
            "ok": ok, "failed": _median(side_runs, "failed"), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "images_per_cpu_s": round(_median(side_runs, "images_per_cpu_s"), 1),
            "images_per_s": round(_median(side_runs, "images_per_s"), 1),
            "startup_cpu_s": round(start["cpu_s"], 2), "startup_wall_s": round(start["wall_s"], 2),
            "images_per_cpu_s_startup_subtracted": round(ok / max(1e-9, cpu - start["cpu_s"]), 1),
            "marginal_cpu_ms_per_image": round(marginal * 1e3, 2),
            f"projected_images_per_cpu_s_at_{PROJECT_AT}": round(PROJECT_AT / (start["cpu_s"] + PROJECT_AT * marginal), 1),
            "server_cpu_s": _median(side_runs, "server_cpu_s"),
        }
    ratios = {}
    if "pairlake" in summary:
        for side in sides:
            if side != "pairlake":
                ratios[f"pairlake / {side}"] = {
                    key: round(summary["pairlake"][key] / summary[side][key], 2) if summary[side][key] else None
                    for key in ("images_per_cpu_s", "images_per_s", "images_per_cpu_s_startup_subtracted",
                                f"projected_images_per_cpu_s_at_{PROJECT_AT}")
                }
    cfg = {k: v for k, v in settings.pairlake_config.items() if k != "allow_hosts"}
    return {
        "benchmark": "download",
        "what": "pairlake download_batch vs img2dataset 1.47.0: fetch + 256 px border resize + JPEG q95, "
                "same loopback server and URLs, whole processes, CPU from wait4 rusage (children included)",
        "headline_ratio": "pairlake / img2dataset:dummy images per CPU-second (pairlake's output: the Arrow "
                          "table in memory; img2dataset's dummy writer writes nothing)",
        "goal": "pairlake >= 2x img2dataset images per CPU-second",
        "urls": args.urls,
        "distinct_images": len(paths),
        "image_kinds": kinds,
        "mean_image_bytes": round(sum(map(len, bodies)) / len(bodies)),
        "mean_megapixels": round(sum(w * h for w, h in sizes) / len(sizes) / 1e6, 2),
        "widths": [min(w for w, _ in sizes), max(w for w, _ in sizes)],
        "repeat": args.repeat,
        "settings": {
            "shared": {"image_size": config.image_size, "resize_mode": config.resize_mode,
                       "encode_format": config.encode_format, "encode_quality": config.encode_quality,
                       "min_image_size": config.min_image_size, "max_aspect_ratio": config.max_aspect_ratio,
                       "max_image_pixels": config.max_image_pixels, "timeout_s": config.timeout_s,
                       "retries": config.retries,
                       "note": "pairlake's DownloadConfig defaults (= img2dataset's own defaults for size, "
                               "mode, format and quality); the limits passed to img2dataset as min_image_size, "
                               "max_aspect_ratio, max_image_area"},
            "cpus": settings.cpus or f"affinity of the benchmark ({len(os.sched_getaffinity(0))} CPUs)",
            "img2dataset": {"processes_count": settings.processes, "thread_count": settings.threads,
                            "number_sample_per_shard": settings.shard_size, "extract_exif": False,
                            "compute_hash": "sha256", "distributor": "multiprocessing",
                            "downscale": "cv2 INTER_AREA on the full decode"},
            "pairlake": {"concurrency": config.concurrency, "per_host_concurrency": config.per_host_concurrency,
                         "decode_threads": settings.decode_threads or f"download_batch default (min(4, "
                                                                      f"cpu_count) = {min(4, os.cpu_count() or 1)})",
                         "digests": "sha256, sha1, md5",
                         "policy_files": "robots.txt, tdmrep.json, ai.txt fetched once (404 here)",
                         "downscale": "PIL draft (JPEG DCT scaling) + BOX", "config": cfg},
        },
        "machine": describe(load_before, load_after),
        "versions": _versions(),
        "summary": summary,
        "ratios": ratios,
        "startup_runs": startup,
        "runs": runs,
        "breakdown": breakdown,
    }


def _print(report: dict) -> None:
    print(f"\n{report['urls']} URLs over {report['distinct_images']} images {report['image_kinds']} "
          f"(mean {report['mean_image_bytes'] / 1e3:.0f} kB, {report['mean_megapixels']} MP, "
          f"{report['widths'][0]}-{report['widths'][1]} px wide); 256 px border, JPEG q95; "
          f"median of {report['repeat']}")
    header = (f"{'side':<24} {'ok':>6} {'failed':>6} {'cpu_s':>7} {'wall_s':>7} {'img/cpu-s':>9} {'img/s':>7} "
              f"{'start cpu':>9} {'start wall':>10} {'img/cpu-s -start':>16} {'server cpu':>10}")
    print(header)
    for side, s in report["summary"].items():
        print(f"{side:<24} {s['ok']:>6} {s['failed']:>6} {s['cpu_s']:>7.1f} {s['wall_s']:>7.1f} "
              f"{s['images_per_cpu_s']:>9.1f} {s['images_per_s']:>7.1f} {s['startup_cpu_s']:>9.2f} "
              f"{s['startup_wall_s']:>10.2f} {s['images_per_cpu_s_startup_subtracted']:>16.1f} "
              f"{s['server_cpu_s']:>10.1f}")
    for side, s in report["summary"].items():
        print(f"{side:<24} marginal {s['marginal_cpu_ms_per_image']:.2f} CPU-ms per image; projected at "
              f"{PROJECT_AT} URLs: {s[f'projected_images_per_cpu_s_at_{PROJECT_AT}']} img/cpu-s")
    for name, ratio in report["ratios"].items():
        print(f"{name}: {ratio['images_per_cpu_s']}x per CPU-second, {ratio['images_per_s']}x per second, "
              f"{ratio['images_per_cpu_s_startup_subtracted']}x startup subtracted, "
              f"{ratio[f'projected_images_per_cpu_s_at_{PROJECT_AT}']}x projected to {PROJECT_AT} URLs "
              f"(startup + {PROJECT_AT} x marginal CPU per image)")
    breakdown = report["breakdown"]
    if "fetch_only" in breakdown:
        fetch = breakdown["fetch_only"]
        for name, r in fetch.items():
            if isinstance(r, dict):
                print(f"fetch only, {fetch['urls']} URLs, {name}: {r['ok']} ok, cpu {r['cpu_s']:.1f}s, "
                      f"wall {r['wall_s']:.1f}s, {r['images_per_cpu_s']:.0f} img/cpu-s")
    alone = breakdown["resize_alone"]
    print(f"decode+resize+encode alone (one thread, in process, {alone['images']} images x {alone['rounds']}): "
          f"pairlake {alone['pairlake_resize_cpu_ms']} CPU-ms per image, img2dataset "
          f"{alone['img2dataset_resize_cpu_ms']}; digests: " + ", ".join(
              f"{k} {v}" for k, v in alone.items() if "hash" in k))
    for kind, k in alone["per_kind_resize_cpu_ms"].items():
        print(f"  {kind:<5} x{k['images']:<4} pairlake {k['pairlake']:6.2f} ms  img2dataset {k['img2dataset']:6.2f} ms  "
              f"ratio {k['ratio']}")
    s = report["settings"]
    print(f"img2dataset: {s['img2dataset']}; pairlake: concurrency {s['pairlake']['concurrency']}, decode threads "
          f"{s['pairlake']['decode_threads']}; cpus: {s['cpus']}")
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} CPUs; load {m['load_before']} before, {m['load_after']} after")


if __name__ == "__main__":
    main()
