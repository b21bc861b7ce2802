"""Near-duplicate clustering at scale: seconds and clusters for ``--n`` CLIP-like embeddings, in
one process and as Spark tasks.

Generates ``--n`` embeddings with ``bench_knn_index.clustered_embeddings`` (a mixture of gaussians
on the sphere: no two rows reach cosine 0.95 by chance), overwrites ``--pairs`` rows with near
copies of other rows (cosine uniform in [0.96, 0.995]) and ``--exact`` rows with exact copies, then
times each engine end to end (k-means cells, search, connected components) and counts the planted
pairs that ended up in one cluster: ``one-process`` is ``gpu_jobs.near_duplicates`` on arrays in
this process; ``spark`` is ``spark_jobs.near_duplicates_job`` on local[2] over the embeddings stored
as the lake stores them (float16 bytes in Parquet, read and cached before the clock starts).
Peak RSS: what each engine added to this process (which holds the input arrays), and the Spark
executors' processes.
Goal: 1M x 512 in <= 10 minutes on a 2-core CPU. Prints a table and writes
``benchmarks/results/near_duplicates.json``; the machine is shared, so the load average is recorded.

    .venv/bin/python -m benchmarks.bench_near_duplicates [--n 1000000] [--dim 512] [--engines one-process spark]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_knn_index import clustered_embeddings, machine
from benchmarks.process_tree import peak_rss_mb, reset_peak_rss, rss_mb, tree_cpu_seconds, tree_peak_rss_mb
from gpu_jobs.near_duplicates import near_duplicate_clusters
from infra.config import SparkConfig
from infra.spark import spark_session

RESULTS = Path(__file__).parent / "results" / "near_duplicates.json"


def plant_pairs(x: np.ndarray, pairs: int, exact: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite rows with copies of others, in place; returns (source rows, copy rows)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), 2 * (pairs + exact), replace=False)
    src, dst = rows[: pairs + exact], rows[pairs + exact :]
    cosine = np.concatenate([rng.uniform(0.96, 0.995, pairs), np.ones(exact)]).astype(np.float32)[:, None]
    direction = rng.standard_normal((len(src), x.shape[1]), dtype=np.float32)
    direction -= (direction * x[src]).sum(axis=1, keepdims=True) * x[src]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    copies = cosine * x[src] + np.sqrt(1 - cosine**2) * direction
    x[dst] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return src, dst


def write_reps(x: np.ndarray, preference: np.ndarray, path: Path) -> None:
    """The embeddings as the lake stores them: float16 bytes per row, beside uid and rank."""
    x16 = x.astype(np.float16)
    schema = pa.schema([("uid", pa.string()), ("rank", pa.float64()), ("image_embedding", pa.binary())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(x), 100_000):
            rows = range(start, min(len(x), start + 100_000))
            writer.write_table(pa.table({
                "uid": [f"{r:09d}" for r in rows], "rank": -preference[start : rows.stop],
                "image_embedding": pa.array([x16[r].tobytes() for r in rows], pa.binary())}, schema=schema))


def spark_clusters(spark, path: Path, n: int, dim: int, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """The Spark job over the stored embeddings (read and cached before the clock starts, as a
    table a pipeline reads); returns (cluster row per row, figures of the job alone)."""
    from pyspark.sql import functions as F

    from spark_jobs.near_duplicates_job import near_duplicate_clusters as spark_job

    reps = spark.read.parquet(str(path)).persist()
    reps.count()
    reset_peak_rss()
    rss, cpu, start = rss_mb(), tree_cpu_seconds(), time.perf_counter()
    found = spark_job(spark, reps, n, F.struct("rank", "uid"), dim, args.threshold, args.k, nprobe=4, max_cells=16_384)
    result = found.select("uid", "cluster").toArrow()
    figures = {"seconds": time.perf_counter() - start, "cpu_s": tree_cpu_seconds() - cpu,
               "peak_rss_mb": {"driver growth": round(peak_rss_mb() - rss),
                               **{name: round(mb) for name, mb in tree_peak_rss_mb().items()}}}
    reps.unpersist()
    cluster = np.empty(n, dtype=np.int64)
    cluster[np.array(result["uid"].to_pylist(), dtype=np.int64)] = np.array(result["cluster"].to_pylist(), dtype=np.int64)
    return cluster, figures


def _summary(cluster: np.ndarray, figures: dict, src: np.ndarray, dst: np.ndarray, args: argparse.Namespace) -> dict:
    recovered = cluster[src] == cluster[dst]
    size = np.bincount(cluster, minlength=len(cluster))[cluster]
    planted_rows = np.zeros(len(cluster), dtype=bool)
    planted_rows[src] = planted_rows[dst] = True
    representative = cluster == np.arange(len(cluster))
    return {
        "seconds": round(figures["seconds"], 1), "cpu_s": round(figures["cpu_s"], 1), "peak_rss_mb": figures["peak_rss_mb"],
        "clusters": int(representative.sum()),
        "clusters_with_duplicates": int((representative & (size > 1)).sum()),
        "unplanted_rows_in_duplicate_clusters": int(((size > 1) & ~planted_rows).sum()),
        "near_pairs_recovered": int(recovered[: args.pairs].sum()),
        "exact_pairs_recovered": int(recovered[args.pairs :].sum()),
        "goal_met": figures["seconds"] <= 600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=10_000, help="planted near-duplicate pairs")
    parser.add_argument("--exact", type=int, default=1_000, help="planted exact-copy pairs")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", choices=["one-process", "spark"], default=["one-process", "spark"])
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    x = clustered_embeddings(args.n, args.dim, seed=args.seed)
    src, dst = plant_pairs(x, args.pairs, args.exact, args.seed + 1)
    generate_s = time.perf_counter() - start
    preference = np.random.default_rng(args.seed + 2).uniform(0, 1, args.n)
    print(f"{args.n:,} x {args.dim} embeddings with {args.pairs:,} near + {args.exact:,} exact planted pairs "
          f"generated in {generate_s:.1f}s", flush=True)

    runs = {}
    if "one-process" in args.engines:
        print("one-process ...", flush=True)
        reset_peak_rss()
        rss, cpu, start = rss_mb(), tree_cpu_seconds(), time.perf_counter()
        cluster = near_duplicate_clusters(x, args.threshold, preference, k=args.k).cluster
        runs["one-process"] = _summary(cluster, {
            "seconds": time.perf_counter() - start, "cpu_s": tree_cpu_seconds() - cpu,
            "peak_rss_mb": {"driver growth": round(peak_rss_mb() - rss)}}, src, dst, args)
    if "spark" in args.engines:
        print("spark ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-near-dup-") as tmp, \
                spark_session(SparkConfig(master="local[2]", app_name="bench-near-duplicates")) as spark:
            path = Path(tmp) / "reps.parquet"
            write_reps(x, preference, path)
            runs["spark"] = _summary(*spark_clusters(spark, path, args.n, args.dim, args), src, dst, args)
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "n": args.n, "dim": args.dim, "threshold": args.threshold, "k": args.k, "generate_s": generate_s,
        "runs": runs,
    }
    print(f"near-duplicate clusters (threshold={args.threshold}, k={args.k}) of {args.n:,} x {args.dim}; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"  {'engine':<12} {'seconds':>8} {'CPU s':>7} {'clusters':>10} {'dup clusters':>12} {'near found':>14} "
          f"{'exact found':>12} {'unplanted':>9}  peak RSS MB")
    for engine, r in runs.items():
        near = f"{r['near_pairs_recovered']:,}/{args.pairs:,}"
        exact = f"{r['exact_pairs_recovered']:,}/{args.exact:,}"
        print(f"  {engine:<12} {r['seconds']:>8.1f} {r['cpu_s']:>7.0f} {r['clusters']:>10,} {r['clusters_with_duplicates']:>12,} "
              f"{near:>14} {exact:>12} {r['unplanted_rows_in_duplicate_clusters']:>9,}  "
              + ", ".join(f"{k} {v:,}" for k, v in r["peak_rss_mb"].items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
