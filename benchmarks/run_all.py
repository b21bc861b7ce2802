"""Run every benchmark in turn (`make bench`); each prints its table and writes benchmarks/results/*.json."""

import importlib
import sys

# name -> its arguments here. The WARC benchmark reads a Common Crawl-sized file (38,000 pages,
# ~0.9 GB gzipped, as a CC WARC file is): whole processes on it weigh each side's start-up as a
# real file does, where its 3,000-page default (quicker) weighs pairlake's 1.2 CPU-s of imports 13x.
# The images stage runs at issue H's size, 12,000 URLs (its 2,000-URL default is quicker).
BENCHMARKS: dict[str, list[str]] = {
    "bench_warc_pairs": ["--pages", "38000"],
    "bench_download": [],
    "bench_images_stage": ["--urls", "12000"],
    "bench_dagster_step": [],
    "bench_clip_scoring": [],
    "bench_shard_export": [],
    "bench_delta_commit": [],
    "bench_near_duplicates": [],
    "bench_knn_index": [],
    "bench_optout_purge": [],
    "bench_slow_hosts": [],
    "bench_spark_scoring": [],
    "bench_release_export": [],
    "bench_search_service": [],
}


def main() -> None:
    for name, args in BENCHMARKS.items():
        print(f"\n=== {name} {' '.join(args)} ===", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        sys.argv = [name, *args]
        module.main()


if __name__ == "__main__":
    main()
