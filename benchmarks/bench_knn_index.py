"""kNN index over CLIP-like embeddings: build time, chosen plan, recall@10 and per-query latency.

Builds ``gpu_jobs.knn_index`` on ``--n`` synthetic embeddings (see ``clustered_embeddings``), then,
for the tuned nprobe and its neighbours (half, double), measures recall@10 against exact search on
1000 held-out queries and search latency: one query at a time (median, p95) and batched
throughput. Goal at 1M x 512: recall@10 >= 0.95 at <= 5 ms per query. Prints a table and writes
``benchmarks/results/knn_index.json``. The machine is shared: the load average is recorded.

    .venv/bin/python -m benchmarks.bench_knn_index [--n 1000000] [--dim 512] [--memory-gb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from gpu_jobs.knn_index import build_index, measure_recall, plan_index, search

RESULTS = Path(__file__).parent / "results" / "knn_index.json"


def clustered_embeddings(n: int, dim: int, centres: int = 1000, latent: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors from a mixture of gaussians on the sphere, shaped like CLIP image embeddings.

    Each row is a random one of ``centres`` unit centres plus gaussian spread (std 0.6/sqrt(latent)
    per axis), drawn in a ``latent``-dim subspace embedded at random in ``dim``, plus isotropic
    noise (0.25/sqrt(dim) per axis), then L2-normalised. Real embeddings also concentrate on a
    low-dimensional, clumpy set, which is what gives IVF cells structure; here the nearest
    neighbour sits at cosine ~0.80 and the 10th at ~0.77 (ViT-B/32 image embeddings are similar),
    unrelated rows at ~0. Exact search is the ground truth either way, so only the difficulty of
    the recall target depends on this choice.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)
    means = rng.standard_normal((centres, latent), dtype=np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = min(n, start + 100_000) - start
        z = means[rng.integers(0, centres, rows)] + (0.6 / np.sqrt(latent)) * rng.standard_normal(
            (rows, latent), dtype=np.float32)
        x = z @ basis + (0.25 / np.sqrt(dim)) * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start : start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
            "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus()}


def latency(index: faiss.Index, queries: np.ndarray, batch_queries: np.ndarray) -> dict:
    """Single-query search times (ms) and batched throughput (queries/s), k=10."""
    times = []
    for row in queries:
        start = time.perf_counter()
        search(index, row[None, :], 10)
        times.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    search(index, batch_queries, 10)
    batch_s = time.perf_counter() - start
    return {"single_p50_ms": float(np.median(times)), "single_p95_ms": float(np.percentile(times, 95)),
            "batch_queries_per_s": len(batch_queries) / batch_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--memory-gb", type=float, default=4.0, help="index memory budget for plan_index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    x = clustered_embeddings(args.n, args.dim, args.centres, seed=args.seed)
    generate_s = time.perf_counter() - start
    ids = np.arange(args.n, dtype=np.int64)
    plan = plan_index(args.n, args.dim, int(args.memory_gb * 2**30))
    print(f"{args.n:,} x {args.dim} embeddings generated in {generate_s:.1f}s; plan {plan.factory}: {plan.reason}",
          flush=True)

    start = time.perf_counter()
    index = build_index(x, ids, plan, seed=args.seed)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed + 1)
    latency_queries = x[rng.choice(args.n, args.queries, replace=False)]
    batch_queries = x[rng.choice(args.n, min(args.n, 10 * args.queries), replace=False)]

    ivf = faiss.extract_index_ivf(index) if plan.nlist else None
    tuned = ivf.nprobe if ivf is not None else 0
    runs = []
    for nprobe in sorted({max(1, tuned // 2), tuned, min(plan.nlist, 2 * tuned)} if ivf is not None else {0}):
        if ivf is not None:
            ivf.nprobe = nprobe
        recall = measure_recall(index, x, ids, k=10, queries=args.queries, seed=args.seed)
        runs.append({"nprobe": nprobe, "tuned": nprobe == tuned, "recall_at_10": recall,
                     **latency(index, latency_queries, batch_queries)})

    chosen = next(r for r in runs if r["tuned"])
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "n": args.n, "dim": args.dim, "centres": args.centres, "memory_budget_gb": args.memory_gb,
        "plan": {"factory": plan.factory, "nlist": plan.nlist, "train_size": plan.train_size,
                 "estimated_mb": plan.estimated_bytes / 2**20, "reason": plan.reason},
        "generate_s": generate_s, "build_s": build_s, "runs": runs,
        "goal_met": chosen["recall_at_10"] >= 0.95 and chosen["single_p50_ms"] <= 5.0,
    }
    print(f"build (train {plan.train_size:,} + add {args.n:,} + nprobe tuning) {build_s:.1f}s; "
          f"recall vs exact on {args.queries} held-out queries; load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"  {'nprobe':>6} {'recall@10':>9} {'p50 ms':>7} {'p95 ms':>7} {'batch q/s':>10}")
    for r in runs:
        mark = "*" if r["tuned"] else " "
        print(f"{mark} {r['nprobe']:>6} {r['recall_at_10']:>9.4f} {r['single_p50_ms']:>7.2f} "
              f"{r['single_p95_ms']:>7.2f} {r['batch_queries_per_s']:>10,.0f}")
    print(f"goal (recall@10 >= 0.95 at <= 5 ms/query, tuned nprobe): {'met' if results['goal_met'] else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
