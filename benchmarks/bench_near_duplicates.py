"""Near-duplicate clustering at scale: seconds and clusters for ``--n`` CLIP-like embeddings.

Generates ``--n`` embeddings with ``bench_knn_index.clustered_embeddings`` (a mixture of gaussians
on the sphere: no two rows reach cosine 0.95 by chance), overwrites ``--pairs`` rows with near
copies of other rows (cosine uniform in [0.96, 0.995]) and ``--exact`` rows with exact copies, then
times ``near_duplicate_clusters`` end to end (k-means cells, search, connected components) and
counts the planted pairs that ended up in one cluster. Goal: 1M x 512 in <= 10 minutes on a
2-core CPU. Prints a table and writes ``benchmarks/results/near_duplicates.json``; the machine is
shared, so the load average is recorded.

    .venv/bin/python -m benchmarks.bench_near_duplicates [--n 1000000] [--dim 512] [--pairs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.bench_knn_index import clustered_embeddings, machine
from gpu_jobs.near_duplicates import near_duplicate_clusters

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=10_000, help="planted near-duplicate pairs")
    parser.add_argument("--exact", type=int, default=1_000, help="planted exact-copy pairs")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    x = clustered_embeddings(args.n, args.dim, seed=args.seed)
    src, dst = plant_pairs(x, args.pairs, args.exact, args.seed + 1)
    generate_s = time.perf_counter() - start
    preference = np.random.default_rng(args.seed + 2).uniform(0, 1, args.n)
    print(f"{args.n:,} x {args.dim} embeddings with {args.pairs:,} near + {args.exact:,} exact planted pairs "
          f"generated in {generate_s:.1f}s", flush=True)

    start = time.perf_counter()
    result = near_duplicate_clusters(x, args.threshold, preference, k=args.k)
    seconds = time.perf_counter() - start

    recovered = result.cluster[src] == result.cluster[dst]
    near, exact = recovered[: args.pairs], recovered[args.pairs :]
    multi = result.cluster_size > 1
    planted_rows = np.zeros(args.n, dtype=bool)
    planted_rows[src] = planted_rows[dst] = True
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_before},
        "n": args.n, "dim": args.dim, "threshold": args.threshold, "k": args.k,
        "generate_s": generate_s, "seconds": seconds,
        "clusters": result.num_clusters,
        "clusters_with_duplicates": int((result.representative & multi).sum()),
        "rows_in_duplicate_clusters": int(multi.sum()),
        "unplanted_rows_in_duplicate_clusters": int((multi & ~planted_rows).sum()),
        "planted_near_pairs": args.pairs, "near_pairs_recovered": int(near.sum()),
        "planted_exact_pairs": args.exact, "exact_pairs_recovered": int(exact.sum()),
        "goal_met": seconds <= 600,
    }
    print(f"near_duplicate_clusters(threshold={args.threshold}, k={args.k}); load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"  {'rows':>10} {'seconds':>8} {'clusters':>10} {'dup clusters':>12} {'near pairs found':>17} "
          f"{'exact pairs found':>18}")
    print(f"  {args.n:>10,} {seconds:>8.1f} {result.num_clusters:>10,} {results['clusters_with_duplicates']:>12,} "
          f"{f'{near.sum():,}/{args.pairs:,}':>17} {f'{exact.sum():,}/{args.exact:,}':>18}")
    print(f"rows merged that were not planted: {results['unplanted_rows_in_duplicate_clusters']:,}; "
          f"goal (<= 600 s): {'met' if results['goal_met'] else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
