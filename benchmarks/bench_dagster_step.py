"""Dagster's own fixed costs, as pairlake's runs pay them: per run, per step, per partition.

pairlake executes its jobs in process (``orchestration.runner``: ``execute_in_process``) on the
persistent instance (SQLite storage in a Dagster home, ``infra/dagster/dagster.yaml``). Here, in a
fresh home with that instance file, assets that do no work and return metadata as pairlake's do
are materialized the same way:

- a chain of 1 and of ``--steps`` assets in one run: the slope is Dagster's cost per step (its
  events, the SQLite writes, the IO manager), the intercept its cost per run;
- one asset over 1 and over ``--partitions`` dynamic partitions in one run (a partition range, as
  ``ingest_warc_files`` runs over WARC files): the slope is the cost per partition materialized.

Loading pairlake's definitions (``orchestration.definitions``: imports, assets, sensors) is timed
apart, in a fresh process: a process that launches runs pays it once. Medians of ``--repeat``
runs, wall and this process's CPU. Prints a table and writes ``benchmarks/results/dagster_step.json``.

    .venv/bin/python -m benchmarks.bench_dagster_step [--steps 9] [--partitions 200] [--repeat 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from benchmarks.machine import describe
from orchestration.runner import ensure_dagster_home

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "dagster_step.json"
# pairlake's assets report counts and a table preview; this is about as much metadata.
_METADATA = {"rows": 1000, "partitions": 1, "bytes": 123456, "preview": "x" * 500}


def _chain(steps: int) -> list:
    assets = []
    for i in range(steps):
        deps = [assets[-1]] if assets else []

        @dg.asset(name=f"step_{i}", deps=deps)
        def step() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata=_METADATA)

        assets.append(step)
    return assets


def _partitioned():
    files = dg.DynamicPartitionsDefinition(name="bench_files")

    @dg.asset(partitions_def=files)
    def per_file(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={**_METADATA, "partitions": len(context.partition_keys)})

    return files, per_file


def _timed(run, repeat: int) -> dict[str, float]:
    run()  # warm-up: first-use imports and the storage's schema
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": round(statistics.median(walls), 4), "cpu_s": round(statistics.median(cpus), 4)}


def _definitions_load_s() -> dict[str, float]:
    code = ("import time; w, c = time.perf_counter(), time.process_time(); import orchestration.definitions; "
            "print(time.perf_counter() - w, time.process_time() - c)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    wall, cpu = map(float, done.stdout.split())
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=9, help="assets in the longer chain")
    parser.add_argument("--partitions", type=int, default=200, help="partitions in the larger range")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    definitions = [_definitions_load_s() for _ in range(3)]

    with tempfile.TemporaryDirectory(prefix="bench_dagster_step-") as home:
        os.environ["DAGSTER_HOME"] = home
        ensure_dagster_home()
        instance = dg.DagsterInstance.get()
        chains = {n: _chain(n) for n in (1, args.steps)}
        by_steps = {n: _timed(lambda n=n: dg.materialize(chains[n], instance=instance), args.repeat) for n in chains}
        files, per_file = _partitioned()
        keys = [f"file-{i:05d}.warc.gz" for i in range(args.partitions)]
        instance.add_dynamic_partitions(files.name, keys)

        def over(n: int) -> None:
            tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[n - 1]}
            dg.materialize([per_file], instance=instance, tags=tags)

        by_partitions = {n: _timed(lambda n=n: over(n), args.repeat) for n in (1, args.partitions)}

    def slope(points: dict[int, dict], key: str) -> float:
        (a, low), (b, high) = sorted(points.items())
        return (high[key] - low[key]) / (b - a)

    per_step = {k: round(slope(by_steps, k), 4) for k in ("wall_s", "cpu_s")}
    results = {
        "dagster": dg.__version__,
        "instance": "SQLite storage in a fresh Dagster home (infra/dagster/dagster.yaml), execute_in_process",
        "repeat": args.repeat,
        "runs_by_steps": by_steps,
        "runs_by_partitions": by_partitions,
        "per_step": per_step,
        "per_run": {k: round(by_steps[1][k] - per_step[k], 4) for k in ("wall_s", "cpu_s")},
        "per_partition": {k: round(slope(by_partitions, k), 5) for k in ("wall_s", "cpu_s")},
        "definitions_load": {"wall_s": statistics.median(d["wall_s"] for d in definitions),
                             "cpu_s": statistics.median(d["cpu_s"] for d in definitions)},
        "machine": describe(load_before, os.getloadavg()),
    }
    print(f"Dagster {results['dagster']}, in-process runs on a SQLite instance, medians of {args.repeat}")
    print(f"{'run':<36}{'wall s':>9}{'CPU s':>9}")
    for n, r in by_steps.items():
        print(f"{f'{n} step(s), unpartitioned':<36}{r['wall_s']:>9.3f}{r['cpu_s']:>9.3f}")
    for n, r in by_partitions.items():
        print(f"{f'1 step over {n} partition(s)':<36}{r['wall_s']:>9.3f}{r['cpu_s']:>9.3f}")
    print(f"\nper run {results['per_run']['wall_s']:.3f} s wall; per step {per_step['wall_s']:.3f} s "
          f"({per_step['cpu_s']:.3f} CPU-s); per partition {results['per_partition']['wall_s'] * 1e3:.1f} ms; "
          f"loading pairlake's definitions {results['definitions_load']['wall_s']:.1f} s "
          f"({results['definitions_load']['cpu_s']:.1f} CPU-s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return results


if __name__ == "__main__":
    main()
