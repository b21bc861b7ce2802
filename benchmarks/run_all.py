"""Run every benchmark in turn (`make bench`); each prints its table and writes benchmarks/results/*.json."""

import importlib
import sys

BENCHMARKS = [
    "bench_warc_pairs", "bench_download", "bench_images_stage", "bench_dagster_step", "bench_clip_scoring",
    "bench_shard_export", "bench_delta_commit",
    "bench_near_duplicates", "bench_knn_index", "bench_optout_purge", "bench_slow_hosts",
    "bench_spark_scoring", "bench_release_export", "bench_search_service",
]


def main() -> None:
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        sys.argv = [name]
        module.main()


if __name__ == "__main__":
    main()
