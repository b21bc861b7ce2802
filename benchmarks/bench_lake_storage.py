"""The same lake work on a local folder and in a bucket of the local S3 server (SeaweedFS on
loopback): wall time and CPU seconds per step, of this process and of the server.

Steps, on ``--rows`` IMAGES rows (300-700 random bytes of image each) over ``--partitions`` WARC
partitions, written in two commits (half the partitions each): write; read (uid, url, status of
every row); purge (``purge_uids`` of ``--removed`` uids from 5 partitions: rewrite, vacuum,
checkpoint, log entries dropped). Runs alternate folder, bucket, folder, bucket... (``--repeats``
each), every run on a fresh lake. Prints a table and writes ``benchmarks/results/lake_storage.json``.

    .venv/bin/python -m benchmarks.bench_lake_storage [--rows 100000] [--partitions 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.bench_knn_index import machine
from infra.delta_store import Lake, Lineage
from infra.purge import purge_uids
from infra.s3_server import LocalS3Server
from infra.tables import IMAGES

RESULTS = Path(__file__).parent / "results" / "lake_storage.json"


def _rows(start: int, stop: int, partitions: int, rng: np.random.Generator) -> pa.Table:
    uids = [f"{i:032x}" for i in range(start, stop)]
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    return pa.Table.from_pydict({
        "uid": uids,
        "url": [f"http://img{i % 97}.example/{u}.jpg" for i, u in enumerate(uids)],
        "warc_file": [f"w{i % partitions:03d}.warc.gz" for i in range(start, stop)],
        "status": ["ok"] * len(uids),
        "retryable": [False] * len(uids),
        "attempts": [1] * len(uids),
        "fetched_at": [now] * len(uids),
        "image": [rng.bytes(int(rng.integers(300, 700))) for _ in uids],
    }, schema=pa.schema([IMAGES.schema.field(n) for n in
                         ("uid", "url", "warc_file", "status", "retryable", "attempts", "fetched_at", "image")]))


def _conform(rows: pa.Table) -> pa.Table:
    return pa.Table.from_pydict({f.name: rows[f.name] if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
                                 for f in IMAGES.schema}, schema=IMAGES.schema)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(step: Callable[[], object], server_pid: int | None) -> dict[str, float]:
    server_before = _cpu_s(server_pid) if server_pid else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    return {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "server_cpu_s": round(_cpu_s(server_pid) - server_before, 2) if server_pid else 0.0}


def run_once(lake: Lake, rows: int, partitions: int, removed: int, server_pid: int | None) -> dict[str, dict]:
    rng = np.random.default_rng(7)
    table = _conform(_rows(0, rows, partitions, rng))
    names = sorted({f"w{i:03d}.warc.gz" for i in range(partitions)})

    def write() -> None:
        for part in (names[: partitions // 2], names[partitions // 2:]):
            lake.replace_partitions(IMAGES, table.filter(pc.is_in(table["warc_file"], pa.array(part))), part,
                                    Lineage(run_id="bench"))

    gone = [f"{i:032x}" for i in range(0, removed * partitions, partitions)][:removed]  # all in partition w000
    steps = {"write": write,
             "read": lambda: lake.read(IMAGES, columns=["uid", "url", "status"]),
             "purge": lambda: purge_uids(lake, IMAGES, gone, Lineage(run_id="removal"), partitions=names[:5])}
    out = {name: _timed(step, server_pid) for name, step in steps.items()}
    if lake.read(IMAGES, columns=["uid"]).num_rows != rows - removed:
        raise RuntimeError("the purge did not remove exactly the chosen rows")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--removed", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pairlake-bench-lake-") as work:
        server = LocalS3Server(Path(work) / "s3")
        with server as endpoint:
            os.environ.update(endpoint.environment())
            for repeat in range(args.repeats):
                for where in ("folder", "bucket"):
                    if where == "folder":
                        lake, pid = Lake(str(Path(work) / f"lake-{uuid.uuid4().hex[:8]}")), None
                    else:
                        bucket = f"bench-{uuid.uuid4().hex[:8]}"
                        endpoint.create_bucket(bucket)
                        lake, pid = Lake(f"s3://{bucket}/lake", endpoint.storage_options()), server.pid
                    steps = run_once(lake, args.rows, args.partitions, args.removed, pid)
                    runs.append({"where": where, "repeat": repeat, "steps": steps})
                    print(f"  {where:6} #{repeat}: " + ", ".join(
                        f"{name} {s['wall_s']:.1f} s (cpu {s['cpu_s']:.1f} + server {s['server_cpu_s']:.1f})"
                        for name, s in steps.items()), flush=True)
    print(f"\nlake work on {args.rows:,} rows, {args.partitions} partitions; fastest .. slowest run, wall s "
          "(this process's CPU s + the server's)")
    print(f"  {'step':8} {'folder':>34} {'bucket':>34}")
    for step in ("write", "read", "purge"):
        cells = []
        for where in ("folder", "bucket"):
            picked = sorted((r["steps"][step] for r in runs if r["where"] == where), key=lambda s: s["wall_s"])
            cells.append(" .. ".join(f"{s['wall_s']:.1f} ({s['cpu_s']:.1f} + {s['server_cpu_s']:.1f})"
                                     for s in (picked[0], picked[-1])))
        print(f"  {step:8} {cells[0]:>34} {cells[1]:>34}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                   "machine": machine(), "args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
