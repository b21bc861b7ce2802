"""Benchmark slow hosts against ``download_batch``: the per-host circuit breaker on and off.

Two scenarios, each served by local ImageServers whose slow resources answer after ``--delay``
seconds (past the download timeout, as a slowloris host would):

- ``every-10th-slow``: ``--n`` URLs of one host, every tenth of them slow (issue D's finding 12);
- ``dead-port``: ``--n`` URLs of a healthy port and ``--n`` of a port where every URL is slow.

Runs alternate between ``host_breaker_timeouts = 5`` and ``0`` (off), ``--repeat`` times each.
Prints wall seconds, CPU seconds and the outcome counts, and writes
``benchmarks/results/slow_hosts.json``.

    .venv/bin/python -m benchmarks.bench_slow_hosts [--n 400] [--delay 5] [--repeat 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import resource
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from PIL import Image

from infra.config import DownloadConfig
from infra.image_server import ImageServer, Resource
from spark_jobs.download import download_batch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "slow_hosts.json"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 40, 40)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(urls: list[str], config: DownloadConfig) -> dict:
    table = pa.table({"uid": [f"u{i}" for i in range(len(urls))], "url": urls, "warc_file": ["w"] * len(urls)})
    wall, cpu = time.perf_counter(), _cpu()
    rows = download_batch(table, config)
    return {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(_cpu() - cpu, 2),
            "outcomes": dict(Counter(e or "ok" for e in rows.column("error").to_pylist()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    body = _jpeg()
    healthy, dead = ImageServer(), ImageServer()
    for server in (healthy, dead):
        server.start()
    try:
        for i in range(args.n):
            slow = i % 10 == 9
            healthy.resources[f"/a/{i}.jpg"] = Resource(body=body, delay_s=args.delay if slow else 0.0)
            dead.resources[f"/d/{i}.jpg"] = Resource(body=body, delay_s=args.delay)
        scenarios = {
            "every-10th-slow": [f"{healthy.url}/a/{i}.jpg" for i in range(args.n)],
            "dead-port": [f"{healthy.url}/a/{i}.jpg" for i in range(args.n) if i % 10 != 9]
            + [f"{dead.url}/d/{i}.jpg" for i in range(args.n)],
        }
        base = DownloadConfig(timeout_s=1.0, retries=1, backoff_s=0.1, per_host_concurrency=8, concurrency=64,
                              honour_robots_txt=False, honour_robots_txt_ai_agents=False, honour_tdmrep_json=False,
                              honour_ai_txt=False,
                              allow_hosts=(f"127.0.0.1:{healthy.port}", f"127.0.0.1:{dead.port}"))
        runs: dict[str, dict[str, list[dict]]] = {s: {"breaker 5": [], "breaker off": []} for s in scenarios}
        for _ in range(args.repeat):
            for scenario, urls in scenarios.items():
                for mode, n in (("breaker 5", 5), ("breaker off", 0)):  # alternating, same input
                    runs[scenario][mode].append(_run(urls, dataclasses.replace(base, host_breaker_timeouts=n)))
    finally:
        for server in (healthy, dead):
            server.stop()
    print(f"{'scenario':<18} {'mode':<12} {'urls':>5} {'wall s (best)':>14} {'cpu s':>7}  outcomes")
    for scenario, modes in runs.items():
        for mode, results in modes.items():
            best = min(results, key=lambda r: r["wall_s"])
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(best["outcomes"].items()))
            print(f"{scenario:<18} {mode:<12} {len(scenarios[scenario]):>5} {best['wall_s']:>14} {best['cpu_s']:>7}  "
                  f"{outcomes}")
    report = {"benchmark": "slow_hosts", "n": args.n, "delay_s": args.delay,
              "config": {"timeout_s": base.timeout_s, "retries": base.retries,
                         "per_host_concurrency": base.per_host_concurrency},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_avg_1m": os.getloadavg()[0]},
              "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} (load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
