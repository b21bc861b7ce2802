"""Benchmark the ``images`` Spark stage (``spark_jobs.images_job.download_images``) end to end, and
where its time goes, against ``download_batch`` alone on the same URLs.

The realistic images of ``bench_download`` (1024-2048 px photos, mean ~180 kB; a few WebPs and PNGs)
are served from a separate process on ``--hosts`` loopback ports (each port is a host, and the stage
gives each host's URLs to one task). A lake gets ``candidates`` for a small partition (``--small``
URLs) and for ``--files`` partitions holding ``--urls`` URLs; then, in one Spark session (local
mode), the stage runs on a small partition (cold: the first job through its Python workers), on
another one (warm: the stage's fixed cost: planning, reads, joins, the Delta commit, the counts)
and on the big ones (fixed + per image). Each run is split from the Delta log:
the commit (log entry written after the last data file) and the counting after it; the rest is
the job (planning, the downloads, the Parquet writes). CPU = the process tree's (driver, JVM, its
Python workers: reaped workers counted via their parent's cumulative times). For comparison,
``download_batch`` alone as a whole process (``bench_download``'s worker) on the big run's URLs.

The peers (``--peers``), img2dataset 1.47.0 as whole processes on the big run's URLs (the same
servers), with ``bench_download``'s settings for it (its flags), processes_count = the master's
cores, and each process's threads = one stage task's concurrency: ``img2dataset`` (its
multiprocessing distributor; CPU from wait4, its pool and logger reaped) and
``img2dataset-pyspark`` (distributor=pyspark, its own local[N] session, a shard per Spark task;
CPU from /proc, read by ``peer_scripts/img2dataset_spark.py`` before the session stops, as Spark
leaves its workers unreaped). They run before pairlake's Spark session and again after it (order
reversed), bracketing it on a machine whose load drifts; their figures are the rounds' means.
Prints a table and writes ``benchmarks/results/images_stage.json``.

    .venv/bin/python -m benchmarks.bench_images_stage [--urls 2000] [--files 4] [--hosts 4] \
        [--peers img2dataset,img2dataset-pyspark] [--peer-format parquet] [--peer-rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa

from benchmarks.bench_download import (STARTUP_URLS, Server, Settings, cached_images, run_img2dataset,
                                       run_img2dataset_process, run_pairlake)
from benchmarks.machine import describe
from benchmarks.peers import peer_python
from benchmarks.process_tree import tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "images_stage.json"
PEERS = ("img2dataset", "img2dataset-pyspark")
SPARK_PEER = "img2dataset-1.47.0-pyspark"
SPARK_SCRIPT = ROOT / "benchmarks" / "peer_scripts" / "img2dataset_spark.py"


def write_candidates(lake, partition: str, urls: list[str]) -> None:
    from infra.delta_store import Lineage
    from infra.tables import CANDIDATES
    from spark_jobs.warc_pairs import pair_uid

    captions = [f"a photo, number {i}" for i in range(len(urls))]
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    columns = {
        "uid": [pair_uid(u, c) for u, c in zip(urls, captions)], "url": urls, "caption": captions,
        "language": ["en"] * len(urls), "language_score": [0.99] * len(urls),
        "page_url": [f"http://site{i % 97}.example/page{i // 10}.html" for i in range(len(urls))],
        "crawl_id": ["BENCH"] * len(urls), "warc_file": [partition] * len(urls), "record_offset": list(range(len(urls))),
        "fetch_date": [now] * len(urls),
    }
    table = pa.table({f.name: columns.get(f.name, pa.nulls(len(urls), f.type)) for f in CANDIDATES.schema},
                     schema=CANDIDATES.schema)
    lake.replace_partitions(CANDIDATES, table, [partition], Lineage(run_id="bench-setup"))


def run_peer(peer: str, settings: Settings, url_file: Path, output_format: str) -> dict:
    """One whole img2dataset process over ``url_file``; for the pyspark one, its start (imports, the
    JVM, the session) and its ``download`` call apart too."""
    if peer == "img2dataset":
        return run_img2dataset(settings, url_file, output_format)
    program = [str(peer_python(SPARK_PEER)), str(SPARK_SCRIPT), "--distributor=pyspark"]
    process, outcome = run_img2dataset_process(settings, program, url_file, output_format)
    inner = json.loads(process.stdout.strip().splitlines()[-1])
    return {"cpu_s": inner["start_cpu_s"] + inner["download_cpu_s"],
            "wall_s": inner["start_wall_s"] + inner["download_wall_s"], **outcome,
            "spark": {**{k: round(v, 2) for k, v in inner.items()},
                      # the process to its exit (the session's stop), and the CPU wait4 saw of it
                      "process_wall_s": round(process.wall_s, 2), "process_wait4_cpu_s": round(process.cpu_s, 2)}}


def _summarise(runs: list[dict]) -> dict[str, dict]:
    """A peer's rounds, averaged: its whole process and, on Spark, its start (imports, the JVM, the
    session: no images yet) and its ``download`` call apart; with their rates."""
    def mean(key: str, part: str | None = None) -> float:
        return round(statistics.mean((r["spark"][f"{part}_{key}"] if part else r[key]) for r in runs), 2)

    ok = mean("ok")
    parts = {"whole": {"ok": ok, "cpu_s": mean("cpu_s"), "wall_s": mean("wall_s")}}
    if "spark" in runs[0]:
        parts["start"] = {"cpu_s": mean("cpu_s", "start"), "wall_s": mean("wall_s", "start")}
        parts["download"] = {"ok": ok, "cpu_s": mean("cpu_s", "download"), "wall_s": mean("wall_s", "download")}
    for part in parts.values():
        if "ok" in part:
            part.update(images_per_s=round(part["ok"] / part["wall_s"], 1),
                        images_per_cpu_s=round(part["ok"] / part["cpu_s"], 1))
    return parts


def _local_cores(master: str) -> int:
    match = re.fullmatch(r"local\[(\d+)\]", master)
    return int(match[1]) if match else os.cpu_count() or 1


def _log_phases(lake, version: int, ended: float) -> dict:
    """The commit and the counting of one stage run, from file times: the commit = its log entry's
    time less the last data file's; the counting = from the log entry to the stage's return."""
    from infra.tables import IMAGES

    table_dir = lake.table(IMAGES).table_uri.removeprefix("file://")
    entry = Path(table_dir) / "_delta_log" / f"{version:020d}.json"
    adds = [json.loads(line)["add"]["path"] for line in entry.read_text().splitlines() if '"add"' in line]
    last_file = max((Path(table_dir) / unquote(p)).stat().st_mtime for p in adds) if adds else entry.stat().st_mtime
    logged = entry.stat().st_mtime
    return {"commit_s": round(logged - last_file, 3), "counting_s": round(ended - logged, 3), "files": len(adds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=2000, help="URLs of the big run")
    parser.add_argument("--small", type=int, default=STARTUP_URLS, help="URLs of the small (fixed cost) run")
    parser.add_argument("--files", type=int, default=4, help="WARC partitions of the big run")
    parser.add_argument("--hosts", type=int, default=4, help="server ports (hosts): the stage's tasks split by host")
    parser.add_argument("--images", type=int, default=200, help="distinct images")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}; '': none")
    # The stage writes its images into Parquet files.
    parser.add_argument("--peer-format", default="parquet", choices=["parquet", "webdataset", "files", "dummy"],
                        help="img2dataset output_format")
    parser.add_argument("--peer-rounds", type=int, default=2, choices=[1, 2],
                        help="1: the peers after pairlake's runs; 2: before them too")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")

    from infra.config import load_config
    from infra.delta_store import Lake, Lineage
    from infra.spark import build_spark_session
    from infra.tables import IMAGES
    from spark_jobs.images_job import download_images

    paths = cached_images(args.images)
    load_before = os.getloadavg()
    server = Server(paths[0].parent, args.urls + 2 * args.small, ports=args.hosts)
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-images-stage-") as tmp:
        try:
            base = load_config().download
            config = load_config(overrides={
                "lake": {"root": str(Path(tmp) / "lake")},
                "spark": {"master": args.master, "app_name": "bench-images-stage"},
                # One loopback port stands in for many hosts: its limit raised to the global one.
                "download": {"allow_hosts": [u.removeprefix("http://") for u in server.urls],
                             "per_host_concurrency": base.concurrency},
            })
            lake = Lake.of(config.lake)

            def url(i: int) -> str:
                return f"{server.urls[i % args.hosts]}/img/{i}{paths[i % len(paths)].suffix}"

            big = [url(i) for i in range(args.urls)]
            per_file = -(-args.urls // args.files)
            partitions = [f"bench-{k:03d}.warc.gz" for k in range(args.files)]
            for k, partition in enumerate(partitions):
                write_candidates(lake, partition, big[k * per_file:(k + 1) * per_file])
            for k in range(2):  # the first run is cold (JIT, Python workers' imports), the second warm
                write_candidates(lake, f"small-{k}.warc.gz",
                                 [url(args.urls + k * args.small + i) for i in range(args.small)])

            url_file = Path(tmp) / "urls.txt"
            url_file.write_text("\n".join(big) + "\n")
            fields = {**dataclasses.asdict(config.download), "allow_hosts": list(config.download.allow_hosts)}
            # One img2dataset process per core of the master; its threads = one stage task's concurrency.
            peer_settings = Settings(None, _local_cores(args.master), config.download.concurrency, 1000, None, fields,
                                     Path(tmp))
            peer_runs: dict[str, list[dict]] = {peer: [] for peer in peers}

            def peer_round(order: list[str]) -> None:
                for peer in order:
                    before = server.stats()
                    run = run_peer(peer, peer_settings, url_file, args.peer_format)
                    after = server.stats()
                    run.update(server_requests=after["requests"] - before["requests"],
                               server_cpu_s=round(after["cpu_s"] - before["cpu_s"], 2))
                    peer_runs[peer].append(run)
                    print(f"  {peer:<20} {args.urls:>6} URLs: {run['ok']} ok, {run['wall_s']:.1f}s wall, "
                          f"{run['cpu_s']:.1f} CPU-s", flush=True)

            if args.peer_rounds == 2:
                peer_round(peers)

            exclude = {server.process.pid}
            cpu, start = tree_cpu_seconds(exclude=exclude), time.perf_counter()
            spark = build_spark_session(config.spark)
            spark.range(1).count()  # the JVM up and a first job through it
            session = {"wall_s": round(time.perf_counter() - start, 2),
                       "cpu_s": round(tree_cpu_seconds(exclude=exclude) - cpu, 2)}
            print(f"spark session: {session['wall_s']}s wall, {session['cpu_s']} CPU-s", flush=True)

            def stage(name: str, parts: list[str], n: int) -> dict:
                before = server.stats()
                cpu, start = tree_cpu_seconds(exclude=exclude), time.perf_counter()
                version, counts = download_images(spark, lake, parts, config.download, Lineage(run_id=f"bench-{name}"))
                ended, wall = time.time(), time.perf_counter() - start
                cpu = tree_cpu_seconds(exclude=exclude) - cpu
                after = server.stats()
                ok = sum(c.get("images_ok", 0) for c in counts.values())
                run = {"urls": n, "ok": ok, "failed": sum(c.get("images_failed", 0) for c in counts.values()),
                       "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "images_per_s": round(ok / wall, 1),
                       "images_per_cpu_s": round(ok / cpu, 1) if cpu else None,
                       "server_requests": after["requests"] - before["requests"],
                       "server_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
                       **_log_phases(lake, version, ended)}
                run["job_s"] = round(wall - run["commit_s"] - run["counting_s"], 2)
                print(f"  {name:<6} {n:>6} URLs: {ok} ok, {wall:.1f}s wall (job {run['job_s']}s, commit "
                      f"{run['commit_s']}s, counting {run['counting_s']}s), {cpu:.1f} CPU-s", flush=True)
                return run

            cold = stage("cold", ["small-0.warc.gz"], args.small)
            small = stage("small", ["small-1.warc.gz"], args.small)
            large = stage("big", partitions, args.urls)
            spark.stop()
            assert lake.read(IMAGES, columns=["uid"]).num_rows == args.urls + 2 * args.small
            peer_round(peers[::-1])

            # download_batch alone, a whole process, on the same URLs and download config.
            bare = run_pairlake(Settings(None, 1, 1, 1, None, fields, Path(tmp)), url_file)
            bare["images_per_s"] = round(bare["ok"] / bare["wall_s"], 1)
            bare["images_per_cpu_s"] = round(bare["ok"] / bare["cpu_s"], 1)
        finally:
            server.close()

    # pairlake as a fresh process pays it, like with the peers' whole processes: the session, the
    # first stage's warm-up (its Python workers' start and imports, the JVM's first plans: the cold
    # small run less a warm one) and the big run; the stage alone, with that warm-up, against the
    # Spark peer's download() call (which starts its own workers).
    warm_up = {k: cold[k] - small[k] for k in ("cpu_s", "wall_s")}
    stage_runs = {
        "stage with warm-up": {"ok": large["ok"], **{k: warm_up[k] + large[k] for k in ("cpu_s", "wall_s")}},
        "fresh run": {"ok": large["ok"], **{k: session[k] + warm_up[k] + large[k] for k in ("cpu_s", "wall_s")}},
    }
    peer_summary = {peer: _summarise(runs) for peer, runs in peer_runs.items()}
    ratios: dict[str, dict] = {}
    for peer, parts in peer_summary.items():
        # like with like: each with its start; the stage's run against the peer's download() call
        pairs = [("fresh run", "whole")] + ([("stage with warm-up", "download")] if "download" in parts else [])
        for ours, theirs in pairs:
            a, b = stage_runs[ours], parts[theirs]
            ratios[f"pairlake {ours} / {peer} {theirs}"] = {
                "images_per_cpu_s": round(a["ok"] / a["cpu_s"] / (b["ok"] / b["cpu_s"]), 2),
                "images_per_s": round(a["ok"] / a["wall_s"] / (b["ok"] / b["wall_s"]), 2)}
    marginal_wall = (large["wall_s"] - small["wall_s"]) / max(1, large["ok"] - small["ok"])
    marginal_cpu = (large["cpu_s"] - small["cpu_s"]) / max(1, large["ok"] - small["ok"])
    report = {
        "benchmark": "images_stage",
        "urls": args.urls, "small": args.small, "files": args.files, "hosts": args.hosts, "master": args.master,
        "distinct_images": len(paths),
        "download_config": {k: v for k, v in fields.items() if k != "allow_hosts"},
        "spark_session": session,
        "cold_small_run": cold,
        "small_run": small,
        "big_run": large,
        "per_image": {"stage_marginal_wall_ms": round(marginal_wall * 1e3, 2),
                      "stage_marginal_cpu_ms": round(marginal_cpu * 1e3, 2),
                      # in the worker, after its imports (pyarrow's first table still imports pandas: ~2 CPU-s)
                      "bare_download_batch_wall_ms": round(bare["inner"]["batch_wall_s"] / bare["ok"] * 1e3, 2),
                      "bare_download_batch_cpu_ms": round(bare["inner"]["batch_cpu_s"] / bare["ok"] * 1e3, 2)},
        "bare_download_batch": bare,
        "peers": {"settings": {"output_format": args.peer_format, "rounds": args.peer_rounds,
                               "processes_count": peer_settings.processes, "thread_count": peer_settings.threads,
                               "number_sample_per_shard": peer_settings.shard_size, "extract_exif": False,
                               "compute_hash": "sha256"},
                  "summary": peer_summary, "runs": peer_runs},
        "pairlake_runs": stage_runs,
        "ratios": ratios,
        "machine": describe(load_before, os.getloadavg()),
    }
    print(f"\n{'run':<30} {'urls':>6} {'ok':>6} {'wall_s':>7} {'job_s':>6} {'commit_s':>8} {'count_s':>7} "
          f"{'cpu_s':>7} {'img/s':>7} {'img/cpu-s':>9}")
    print(f"{'spark session start':<30} {'':>6} {'':>6} {session['wall_s']:>7.1f} {'':>6} {'':>8} {'':>7} "
          f"{session['cpu_s']:>7.1f}")
    for name, r in (("stage, small, first (cold)", cold), ("stage, small partition", small),
                    ("stage, big partitions", large)):
        print(f"{name:<30} {r['urls']:>6} {r['ok']:>6} {r['wall_s']:>7.1f} {r['job_s']:>6.1f} {r['commit_s']:>8.2f} "
              f"{r['counting_s']:>7.2f} {r['cpu_s']:>7.1f} {r['images_per_s']:>7.1f} {r['images_per_cpu_s']!s:>9}")
    print(f"{'download_batch alone':<30} {args.urls:>6} {bare['ok']:>6} {bare['wall_s']:>7.1f} {'':>6} {'':>8} "
          f"{'':>7} {bare['cpu_s']:>7.1f} {bare['images_per_s']:>7.1f} {bare['images_per_cpu_s']:>9}")
    for peer, parts in peer_summary.items():
        for part, r in parts.items():
            name = peer if len(parts) == 1 else f"{peer}, {part}"
            urls = args.urls if "ok" in r else ""
            print(f"{name:<30} {urls:>6} {r.get('ok', ''):>6} {r['wall_s']:>7.1f} {'':>6} {'':>8} {'':>7} "
                  f"{r['cpu_s']:>7.1f} {r.get('images_per_s', ''):>7} {r.get('images_per_cpu_s', ''):>9}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio['images_per_cpu_s']}x images per CPU-second, {ratio['images_per_s']}x per second")
    print("per image:", json.dumps(report["per_image"]))
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} CPUs, {args.master}; load {m['load_before']} before, "
          f"{m['load_after']} after")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
