"""The whole graph from ``images`` onward at two sizes: wall time, CPU and peak RSS per stage, of the
driver (the step process) and of the Spark executors (the JVM and its Python workers).

Synthetic crawl data: ``--sizes`` pairs (default 100k and 400k), each a distinct 48 px JPEG (one
of 2,000 rendered coloured shapes, ``gpu_jobs.synthetic_shapes``, with its own pixel noise) and a
caption that matches it, in WARC partitions of ``--pairs-per-file`` pairs (so a larger crawl has
more WARC files, as in life), served by ``--hosts`` image servers (separate processes on loopback
ports: the download stage gives each host one task). ``candidates`` is written directly (parsing
is ``bench_warc_pairs``'s subject); a small hash list is imported. Then each stage runs as its asset
runs it, on one local[2] Spark session with the demo profile and the demo model: images,
clip_scores, image_tags, kept_pairs, blocklist_matches, dedup (near-duplicate threshold 1.0, so
that the curated set grows with the crawl: the search runs in full all the same), curated,
knn_index, release. Before
each stage every process's peak RSS is reset (``/proc/<pid>/clear_refs``), and read after it.

Each size runs in a fresh process. Goal (issue E): at the larger size, peak RSS <= 1.2x the
smaller, for the driver and for each kind of executor process. Prints a table and writes
``benchmarks/results/whole_graph.json``; the machine is shared, so the load average is recorded.

    .venv/bin/python -m benchmarks.bench_whole_graph [--sizes 100000 400000] [--hosts 8] [--until images]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.bench_knn_index import machine
from benchmarks.process_tree import peak_rss_mb, tree_pids

RESULTS = Path(__file__).parent / "results" / "whole_graph.json"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench_whole_graph"
POOL = 2_000
SEED = 11
GENERATOR_VERSION = 1
WRITE_ROWS = 20_000


def pair_images(n: int) -> Path:
    """A cached Parquet file of ``n`` (caption, JPEG) pairs; any smaller size reads its head."""
    from gpu_jobs import synthetic_shapes

    existing = sorted(CACHE.glob(f"pairs-v{GENERATOR_VERSION}-*.parquet"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    for path in existing:
        if int(path.stem.rsplit("-", 1)[1]) >= n:
            return path
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"pairs-v{GENERATOR_VERSION}-{n}.parquet"
    print(f"  rendering {n:,} pair images (cached in {path})", flush=True)
    classes = synthetic_shapes.CLASSES
    base = [synthetic_shapes.sample(SEED, j, *classes[j % len(classes)], size=48) for j in range(POOL)]
    pixels = [np.asarray(s.image, np.float32) for s in base]
    schema = pa.schema([("caption", pa.string()), ("image", pa.binary())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, WRITE_ROWS):
            captions, images = [], []
            for i in range(start, min(n, start + WRITE_ROWS)):
                noise = np.random.default_rng([SEED, i]).normal(0, 6, pixels[i % POOL].shape)
                out = io.BytesIO()
                Image.fromarray(np.clip(pixels[i % POOL] + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
                captions.append(base[i % POOL].caption)
                images.append(out.getvalue())
            writer.write_table(pa.table({"caption": captions, "image": images}, schema=schema))
    tmp.replace(path)
    return path


def serve(path: str, n: int, host: int, hosts: int) -> None:
    """The --serve mode: ``/img/<i>.jpg`` for this host's pairs (i % hosts == host)."""
    from infra.image_server import ImageServer, Resource

    resources, i = {}, 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["image"], batch_size=WRITE_ROWS):
        for body in batch.column("image").to_pylist():
            if i < n and i % hosts == host:
                resources[f"/img/{i}.jpg"] = Resource(body)
            i += 1
    with ImageServer(resources) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


def _candidates(lake, path: Path, n: int, urls: list[str], pairs_per_file: int) -> list[str]:
    """Write ``candidates`` for the first ``n`` pairs; returns the WARC partitions."""
    from infra.delta_store import Lineage
    from infra.tables import CANDIDATES
    from spark_jobs.warc_pairs import pair_uid

    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    files: list[str] = []
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["caption"], batch_size=pairs_per_file):
        if i >= n:
            break
        captions = batch.column("caption").to_pylist()[: n - i]
        rows = range(i, i + len(captions))
        url = [f"{urls[r % len(urls)]}/img/{r}.jpg" for r in rows]
        warc = f"bench-{i // pairs_per_file:05d}.warc.gz"
        columns = {
            "uid": [pair_uid(u, c) for u, c in zip(url, captions)], "url": url, "caption": captions,
            "page_url": [f"http://site{r % 97}.example/page{r // 10}.html" for r in rows],
            "crawl_id": ["BENCH"] * len(url), "warc_file": [warc] * len(url), "record_offset": list(rows),
            "fetch_date": [now] * len(url),
        }
        table = pa.table({f.name: columns.get(f.name, pa.nulls(len(url), f.type)) for f in CANDIDATES.schema},
                         schema=CANDIDATES.schema)
        lake.replace_partitions(CANDIDATES, table, [warc], Lineage(run_id="bench-setup"))
        files.append(warc)
        i += len(captions)
    return files


def _hash_lists(lake, path: Path, urls: list[str], folder: Path) -> None:
    """Image md5s of every 997th pair and URL sha256s of every 1009th: a few pairs blocked."""
    import hashlib

    from infra.delta_store import Lineage
    from spark_jobs.blocklist import import_blocklist

    images = next(pq.ParquetFile(path).iter_batches(columns=["image"], batch_size=2_000)).column("image")
    md5 = [hashlib.md5(images[i].as_py()).hexdigest() for i in range(0, 2_000, 997)]
    sha = [hashlib.sha256(f"{urls[i % len(urls)]}/img/{i}.jpg".encode()).hexdigest() for i in range(0, 50_000, 1009)]
    (folder / "images.txt").write_text("\n".join(md5) + "\n")
    (folder / "urls.txt").write_text("\n".join(sha) + "\n")
    import_blocklist(lake, folder / "images.txt", "bench", "image-md5", Lineage(run_id="bench-setup"))
    import_blocklist(lake, folder / "urls.txt", "bench-urls", "url-sha256", Lineage(run_id="bench-setup"))


class _Probe:
    """Peak RSS of the driver and of the Spark JVM's process tree, and the machine's CPU, per stage."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude

    def _pids(self) -> list[int]:
        me = os.getpid()
        return [p for p in tree_pids(me) if p not in self.exclude]

    @staticmethod
    def _machine_cpu() -> float:
        """Busy CPU seconds of the whole machine (/proc/stat): unlike a sum over processes, it keeps
        what the Python workers that exit during a stage used (and counts the image servers')."""
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def run(self, fn: Callable[[], object]) -> dict:
        for pid in self._pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                continue
        cpu, start = self._machine_cpu(), time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        peaks = {"driver": peak_rss_mb()}
        for pid in self._pids():
            if pid == os.getpid():
                continue
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                if name == "java" or name.startswith("python"):  # not the shell that launched the JVM
                    kind = "jvm" if name == "java" else "python worker"
                    peaks[kind] = max(peaks.get(kind, 0.0), peak_rss_mb(pid))
            except OSError:
                continue
        return {"wall_s": round(wall, 2), "machine_cpu_s": round(self._machine_cpu() - cpu, 1),
                "peak_rss_mb": {k: round(v) for k, v in sorted(peaks.items())}}


def one_size(n: int, hosts: int, pairs_per_file: int, until: str | None) -> dict:
    """Every stage over ``n`` pairs in this process; returns per-stage figures."""
    path = pair_images(n)
    servers = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_whole_graph", "--serve", str(path), str(n),
                                 str(h), str(hosts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for h in range(hosts)]
    try:
        urls = [server.stdout.readline().strip() for server in servers]
        return _stages(n, path, urls, pairs_per_file, {s.pid for s in servers}, until)
    finally:
        for server in servers:
            server.stdin.close()
            server.wait(timeout=30)


def _stages(n: int, path: Path, urls: list[str], pairs_per_file: int, servers: set[int], until: str | None) -> dict:
    from gpu_jobs import tagging
    from gpu_jobs.clip_model import model_config, model_identity
    from infra.config import load_config
    from infra.delta_store import Lake, Lineage
    from infra.spark import build_spark_session
    from infra.tables import CURATED
    from spark_jobs import (
        clip_scores_job, curation_job, image_tags_job, images_job, kept_set, knn_index_job, release,
    )

    with tempfile.TemporaryDirectory(prefix="bench-whole-graph-") as tmp:
        root = Path(tmp)
        config = load_config(profile="demo", overrides={
            "lake": {"root": str(root / "lake")},
            "spark": {"master": "local[2]", "app_name": "bench-whole-graph"},
            "download": {"image_size": 64, "allow_hosts": [u.removeprefix("http://") for u in urls]},
            # The pairs share 2,000 rendered shapes: at the demo's 0.998 most would be near
            # duplicates and the curated set would stop growing with the crawl. Only cosine 1 links.
            "curation": {"near_duplicate_threshold": 1.0},
            "release": {"samples_per_shard": 10_000},  # production's, not the demo's 50
        })
        lake = Lake.of(config.lake)
        start = time.perf_counter()
        files = _candidates(lake, path, n, urls, pairs_per_file)
        _hash_lists(lake, path, urls, root)
        print(f"  {n:,} candidates in {len(files)} WARC files, {time.perf_counter() - start:.0f}s", flush=True)
        spark = build_spark_session(config.spark)
        probe = _Probe(servers)
        lineage = Lineage(run_id=f"bench-{n}")
        model_id = model_identity(config.clip)
        threshold = config.clip_threshold()
        out: dict[str, dict] = {}

        def tags() -> None:
            with tagging.registered_heads(lake) as registered:
                scorers, identities = tagging.load_scorers(config.tags, config.clip,
                                                           model_config(config.clip.model)["embed_dim"], registered)
            image_tags_job.tag_partitions(spark, lake, files, model_id, scorers, identities, lineage)

        stages: dict[str, Callable[[], object]] = {
            "images": lambda: images_job.download_images(spark, lake, files, config.download, lineage),
            "clip_scores": lambda: clip_scores_job.score_partitions(spark, lake, files, config.clip, lineage, threshold),
            "image_tags": tags,
            "kept_pairs": lambda: kept_set.write_kept(spark, lake, files, threshold, lineage),
            "blocklist_matches": lambda: curation_job.match_blocklists(spark, lake, lineage),
            "dedup": lambda: curation_job.deduplicate(spark, lake, config.curation, lineage),
            "curated": lambda: curation_job.curate(spark, lake, config.curation, model_id, lineage),
            "knn_index": lambda: knn_index_job.build_variant_index(spark, lake, config.index, model_id, lineage),
            "release": lambda: release.make_release(
                spark, lake, config.release, rules={"benchmark": "whole_graph"},
                source_versions={"curated": lake.version(CURATED)}, lineage=lineage,
                image_ext=config.download.encode_format),
        }
        for name, stage in stages.items():
            if out and list(out)[-1] == until:
                break
            out[name] = probe.run(stage)
            print(f"  {name:<18} {out[name]['wall_s']:>8.1f}s  " + ", ".join(
                f"{k} {v:,} MB" for k, v in out[name]["peak_rss_mb"].items()), flush=True)
        curated = lake.read(CURATED, columns=["variant"])["variant"].value_counts().to_pylist()
        spark.stop()
        return {"pairs": n, "warc_files": len(files), "stages": out,
                "curated": {c["values"]: c["counts"] for c in curated}}


def print_table(runs: list[dict]) -> None:
    small, large = runs[0], runs[-1]
    kinds = sorted({k for run in runs for s in run["stages"].values() for k in s["peak_rss_mb"]})
    print(f"\nwhole graph, {small['pairs']:,} vs {large['pairs']:,} pairs ({small['warc_files']} vs "
          f"{large['warc_files']} WARC files); peak RSS MB per stage, larger/smaller")
    print(f"  {'stage':<18} {'wall s':>15} " + " ".join(f"{k:>24}" for k in kinds))
    for name in small["stages"]:
        a, b = small["stages"][name], large["stages"][name]
        cells = []
        for k in kinds:
            x, y = a["peak_rss_mb"].get(k), b["peak_rss_mb"].get(k)
            cells.append(f"{x or 0:>7,} {y or 0:>7,} {((y or 0) / x if x else 0):>6.2f}x")
        print(f"  {name:<18} {a['wall_s']:>7.1f} {b['wall_s']:>7.1f} " + " ".join(f"{c:>24}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--pairs-per-file", type=int, default=5_000)
    parser.add_argument("--until", help="the last stage to run (default: all)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # size, result file
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]), int(args.serve[3]))
        return
    if args.one:
        Path(args.one[1]).write_text(json.dumps(one_size(int(args.one[0]), args.hosts, args.pairs_per_file, args.until)))
        return
    load = os.getloadavg()[0]
    pair_images(max(args.sizes))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.sizes):
            print(f"{n:,} pairs", flush=True)
            result = Path(tmp) / f"{n}.json"
            subprocess.run([sys.executable, "-m", "benchmarks.bench_whole_graph", "--one", str(n), str(result),
                            "--hosts", str(args.hosts), "--pairs-per-file", str(args.pairs_per_file),
                            *(["--until", args.until] if args.until else [])], check=True)
            runs.append(json.loads(result.read_text()))
    print_table(runs)
    results = {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": {**machine(), "load_average_1m_at_start": load}, "until": args.until, "runs": runs}
    out = RESULTS if not args.until else RESULTS.with_name(f"whole_graph_until_{args.until}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
