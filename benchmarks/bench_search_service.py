"""Search service latency over HTTP: `pairlake serve` on a 1M x 512 index, as clients query it.

The index is ``bench_knn_index``'s (the same generator and plan, built once and kept in
``--cache``) with synthetic metadata, served by a ``pairlake serve`` subprocess whose CLIP model is
ViT-B-32 with seeded random weights (saved as a checkpoint: the encoder's cost is a real
ViT-B-32's; the weights do not matter for timing). Clients post clip-retrieval's request body
(``num_images`` 40, ``deduplicate`` and the safety filter on, as ClipClient sends) for embedding,
text and image queries, and clip-front's embedding query (3000 result ids, metadata for 40, dedup
over all 3000), from 1 and from 8 concurrent clients; per mode, p50 and p95 of the
request's wall time. Goal here: p50 <= 50 ms, p95 <= 150 ms. Then the CLIP forward alone, the
floor under text and image queries on this machine. Prints the tables and writes
``benchmarks/results/search_service.json``. The load average is recorded: the machine is shared.

Side by side (``--sides``): clip-retrieval's own back end, ``clip_back`` 2.45.0 (its peer
virtualenv, ``peer_scripts/clip_back_serve.py``), serves the same index file and metadata with the
same CLIP weights and gets the same request bodies; each side's server runs alone, and the order
of the sides alternates per round (``--rounds``). What clip_back does differently with those
bodies is printed under the table (``CLIP_BACK_DIFFERENCES``).

    .venv/bin/python -m benchmarks.bench_search_service [--n 1000000] [--queries 100] \
        [--sides pairlake,clip_back] [--rounds 1]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import torch
from PIL import Image

from benchmarks.bench_knn_index import clustered_embeddings, machine
from benchmarks.peers import peer_env, peer_python
from gpu_jobs import knn_index as knn
from gpu_jobs.clip_model import load_clip, model_identity
from infra.config import ClipConfig, SearchConfig
from infra.delta_store import Lake

RESULTS = Path(__file__).parent / "results" / "search_service.json"
DIM = 512
MODEL = "ViT-B-32"
GOAL_P50_MS, GOAL_P95_MS = 50.0, 150.0
CLIP_FRONT_RESULT_IDS = 3000
SIDES = ("pairlake", "clip_back")
CLIP_BACK_PEER = "clip-retrieval-2.45.0"
CLIP_BACK_SCRIPT = Path(__file__).parent / "peer_scripts" / "clip_back_serve.py"
# What clip_back does with the same request bodies under these settings, unlike pairlake.
CLIP_BACK_DIFFERENCES = (
    "use_safety_model: clip_back's safety model (autokeras + tensorflow, downloaded at start) is off, so "
    "clip_back ignores the flag and filters nothing; pairlake hides results whose punsafe tag is > 0.5",
    "metadata: clip_back returns url and caption; pairlake returns the whole metadata row",
    "text queries: clip_back encodes all 77 tokens, pairlake stops at the end-of-text token (the same "
    "embedding: identical results)",
    "image queries: clip_back preprocesses the upload as it is; pairlake first resizes and re-encodes it as "
    "its downloader stores images, so the query embedding and the results differ slightly",
    "concurrency: clip_back runs Flask's threaded development server, one forward per request; "
    "pairlake batches concurrent forwards",
)
_WORDS = "a photo of the red blue small large dog cat house car tree beach city night old new vintage poster".split()


def random_checkpoint(cache: Path) -> ClipConfig:
    path = cache / "vit-b-32-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        clip = load_clip(ClipConfig(model=MODEL, pretrained="", device="cpu"), allow_random_init=True)
        torch.save(clip.model.state_dict(), path)
    return ClipConfig(model=MODEL, pretrained="", checkpoint=str(path), device="cpu")


def build_lake(cache: Path, n: int, clip: ClipConfig, memory_gb: int) -> Lake:
    """A lake whose research index holds ``n`` vectors with metadata; built once per (n, model)."""
    lake = Lake(str(cache / f"lake-{n}"))
    folder = knn.index_folder(lake, "research")
    if folder.exists(knn.MANIFEST_FILE):
        return lake
    x = clustered_embeddings(n, DIM)
    plan = knn.plan_index(n, DIM, memory_gb << 30)
    started = time.perf_counter()
    index = knn.build_index(x, np.arange(n), plan, progress=True)
    print(f"built {plan.factory} over {n:,} in {time.perf_counter() - started:.0f} s", flush=True)
    del x
    name = knn.new_metadata_name()
    rng = np.random.default_rng(0)
    with folder.publish(name) as handle, pq.ParquetWriter(handle, knn.METADATA_SCHEMA) as writer:
        for start in range(0, n, 100_000):
            ids = np.arange(start, min(n, start + 100_000))
            rows = {"id": ids, "uid": [f"{i:032x}" for i in ids], "url": [f"https://img.example/{i}.jpg" for i in ids],
                    "caption": [" ".join(rng.choice(_WORDS, 8)) for _ in ids], "warc_file": ["bench.warc.gz"] * len(ids),
                    "punsafe": rng.random(len(ids)).astype(np.float32) * 0.6,
                    "pviolence": rng.random(len(ids)).astype(np.float32) * 0.6,
                    "aesthetic": rng.random(len(ids)).astype(np.float32) * 10}
            writer.write_table(pa.table({f.name: pa.array(rows.get(f.name, [None] * len(ids)), f.type)
                                         for f in knn.METADATA_SCHEMA}))
    knn.save_index(folder, index, {"model_id": model_identity(clip), "vectors": n, "source_version": 0,
                                   "factory": plan.factory, knn.METADATA_MANIFEST_KEY: name})
    return lake


def _await_ready(process: subprocess.Popen, url: str, what: str, timeout_s: float, output: Callable[[], str]) -> None:
    """Wait until ``url`` answers; raise with ``output()`` (the server's stderr) if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {output()[-2000:]}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s")


def start_service(lake: Lake, clip: ClipConfig, port: int, workdir: Path, max_query_batch: int) -> subprocess.Popen:
    config = workdir / "pairlake.toml"
    config.write_text(f'[lake]\nroot = "{lake.root}"\n[clip]\nmodel = "{clip.model}"\npretrained = ""\n'
                      f'checkpoint = "{clip.checkpoint}"\ndevice = "cpu"\n[clip.thresholds]\n"{clip.model}" = 0.28\n'
                      f'[search]\nmax_query_batch = {max_query_batch}\n')
    env = {**os.environ, "PAIRLAKE_CONFIG": str(config)}
    env.pop("PAIRLAKE_PROFILE", None)
    process = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _await_ready(process, f"http://127.0.0.1:{port}/health", "pairlake serve", 300, process.stderr.read)
    return process


def start_clip_back(lake: Lake, clip: ClipConfig, port: int, workdir: Path, cache: Path, n: int,
                    metadata_backend: str) -> subprocess.Popen:
    """clip_back in its peer virtualenv on the lake's research index (its folder laid out under
    ``cache`` once per index save). Its output goes to a file: werkzeug logs every request, which
    would fill an unread pipe and stall the server."""
    folder = knn.index_folder(lake, "research")
    manifest = json.loads(folder.read_bytes(knn.MANIFEST_FILE))
    log = workdir / "clip_back.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(peer_python(CLIP_BACK_PEER)), str(CLIP_BACK_SCRIPT), "--index", str(folder.local_path / knn.INDEX_FILE),
             "--metadata", str(folder.local_path / manifest[knn.METADATA_MANIFEST_KEY]),
             "--save-id", manifest[knn.MANIFEST_INDEX_KEY]["save_id"], "--checkpoint", str(clip.checkpoint),
             "--folder", str(cache / f"clip_back-{n}"), "--port", str(port), "--metadata-backend", metadata_backend],
            env=peer_env(), stdout=out, stderr=subprocess.STDOUT)
    # Its first start converts metadata (hdf5) and reads the whole index file: allow more than pairlake.
    _await_ready(process, f"http://127.0.0.1:{port}/indices-list", "clip_back", 900, log.read_text)
    return process


def choose_sides(requested: str | None) -> tuple[list[str], str | None]:
    """The sides to run and, when clip_back was left out by default, why. A side asked for by name
    must start: its install errors are raised."""
    if requested:
        sides = requested.split(",")
        if unknown := set(sides) - set(SIDES):
            raise SystemExit(f"--sides: unknown {sorted(unknown)}; choose from {', '.join(SIDES)}")
        if "clip_back" in sides:
            peer_python(CLIP_BACK_PEER)
        return sides, None
    try:
        peer_python(CLIP_BACK_PEER)
    except (subprocess.CalledProcessError, OSError) as exc:
        reason = f"{CLIP_BACK_PEER} did not install ({exc}): pairlake only"
        print(reason, flush=True)
        return ["pairlake"], reason
    return list(SIDES), None


def query_bodies(mode: str, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    base = {"modality": "image", "indice_name": "research", "num_images": 40, "num_result_ids": 40,
            "deduplicate": True, "use_safety_model": True, "use_violence_detector": False}
    if mode in ("embedding", "clip-front"):
        vectors = clustered_embeddings(count, DIM, seed=seed + 1)
        if mode == "clip-front":  # clip-front's own query: 3000 ids, metadata for the first 40
            base = {**base, "num_result_ids": CLIP_FRONT_RESULT_IDS}
        return [{**base, "embedding_input": [round(float(v), 6) for v in row]} for row in vectors]
    if mode == "text":
        return [{**base, "text": " ".join(rng.choice(_WORDS, 6))} for _ in range(count)]
    bodies = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        bodies.append({**base, "image": base64.b64encode(out.getvalue()).decode()})
    return bodies


def measure(url: str, bodies: list[dict], clients: int) -> dict:
    payloads = [json.dumps(b) for b in bodies]
    sessions = [requests.Session() for _ in range(clients)]

    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        response = sessions[i % clients].post(f"{url}/knn-service", data=payloads[i], timeout=120)
        elapsed = time.perf_counter() - started
        results = response.json() if response.status_code == 200 else None
        if not results:
            raise RuntimeError(f"query failed: {response.status_code} {response.text[:300]}")
        return elapsed * 1000, len(results)

    for i in range(min(3, len(payloads))):  # warm: model loaded, index pages touched
        one(i)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        times, counts = zip(*pool.map(one, range(len(payloads))))
    wall = time.perf_counter() - started
    # Results per query: the sides' filters differ (CLIP_BACK_DIFFERENCES), so their counts do too.
    return {"clients": clients, "queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1), "queries_per_s": round(len(times) / wall, 1),
            "results_per_query": round(float(np.mean(counts)), 1)}


def measure_side(side: str, round_: int, args: argparse.Namespace, lake: Lake, clip: ClipConfig,
                 bodies: dict[str, list[dict]]) -> list[dict]:
    """Start ``side``'s server alone, post every mode's bodies from 1 and 8 clients, stop it."""
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        if side == "pairlake":
            process = start_service(lake, clip, args.port, Path(workdir), args.max_query_batch)
        else:
            process = start_clip_back(lake, clip, args.port, Path(workdir), args.cache, args.n, args.clip_back_metadata)
        try:
            for mode, mode_bodies in bodies.items():
                for clients in (1, 8):
                    rows.append({"side": side, "round": round_, "mode": mode,
                                 **measure(f"http://127.0.0.1:{args.port}", mode_bodies, clients)})
                    print(rows[-1], flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return rows


def forward_floor(clip_config: ClipConfig, runs: int = 10) -> list[dict]:
    """The CLIP forward alone, in this process, as the service runs it (``encode_text`` up to the
    end-of-text token; ``encode_image`` on preprocessed pixels): median ms for 1 and 8 queries.
    No service can answer a text or image query faster; 8 closed-loop clients on this machine's
    cores cannot see a p50 under 8 x the one-query forward's CPU / cores."""
    from gpu_jobs.retrieval import encode_text

    clip = load_clip(clip_config)
    queries = [" ".join(np.random.default_rng(i).choice(_WORDS, 6)) for i in range(8)]
    pixels = torch.randn(8, 3, clip.model.visual.image_size[0], clip.model.visual.image_size[1])
    forwards = {
        "text": lambda n: encode_text(clip.model, clip.tokenizer(queries[:n])),
        "image": lambda n: clip.model.encode_image(pixels[:n]),
    }
    rows = []
    with torch.inference_mode():
        for tower, forward in forwards.items():
            for n in (1, 8):
                forward(n)  # warm-up
                wall, cpu = [], []
                for _ in range(runs if n == 1 else max(3, runs // 3)):
                    w, c = time.perf_counter(), time.process_time()
                    forward(n)
                    wall.append(time.perf_counter() - w)
                    cpu.append(time.process_time() - c)
                rows.append({"tower": tower, "queries": n, "wall_ms": round(1000 * float(np.median(wall)), 1),
                             "cpu_ms": round(1000 * float(np.median(cpu)), 1)})
    cores = len(os.sched_getaffinity(0))
    for row in rows:
        if row["queries"] == 1:
            row["p50_floor_8_clients_ms"] = round(8 * row["cpu_ms"] / cores, 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100, help="per mode and concurrency")
    parser.add_argument("--memory-gb", type=int, default=4)
    parser.add_argument("--port", type=int, default=18434)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pairlake-bench-search")
    parser.add_argument("--max-query-batch", type=int, default=SearchConfig.max_query_batch,
                        help="search.max_query_batch of the service (1: no shared forwards)")
    parser.add_argument("--modes", default="embedding,clip-front,text,image")
    parser.add_argument("--sides", help=f"comma-separated, of {','.join(SIDES)} (default: both, or pairlake "
                                        f"alone with the reason printed when {CLIP_BACK_PEER} does not install)")
    parser.add_argument("--rounds", type=int, default=1, help="each side once per round; the order alternates")
    parser.add_argument("--clip-back-metadata", choices=("parquet", "hdf5", "arrow"), default="parquet",
                        help="clip_back's metadata provider (parquet: its default)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    sides, skipped = choose_sides(args.sides)
    clip = random_checkpoint(args.cache)
    lake = build_lake(args.cache, args.n, clip, args.memory_gb)
    # One set of bodies per mode, posted to every side (seeds as when pairlake ran alone).
    bodies = {mode: query_bodies(mode, args.queries, seed=2 * i) for i, mode in enumerate(args.modes.split(","))}
    rows = []
    for round_ in range(1, args.rounds + 1):
        for side in sides if round_ % 2 else sides[::-1]:
            rows += measure_side(side, round_, args, lake, clip, bodies)

    def round_cell(value: object) -> str:  # a round column only when there are rounds to tell apart
        return f"{value:>5} " if args.rounds > 1 else ""

    print(f"\n{'side':<9} {round_cell('round')}{'mode':<10} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8} {'q/s':>7}")
    for r in rows:
        print(f"{r['side']:<9} {round_cell(r['round'])}{r['mode']:<10} {r['clients']:>7} {r['p50_ms']:>8} "
              f"{r['p95_ms']:>8} {r['queries_per_s']:>7}")
    if "clip_back" in sides:
        print(f"\nclip_back ({CLIP_BACK_PEER}, {args.clip_back_metadata} metadata) with the same bodies, unlike pairlake:")
        for line in CLIP_BACK_DIFFERENCES:
            print(f"- {line}")
    floor = forward_floor(clip)
    print("\nthe CLIP forward alone, in-process (no service can answer text/image queries faster)")
    print(f"{'tower':<6} {'queries':>7} {'wall ms':>8} {'CPU ms':>8} {'p50 floor, 8 clients':>21}")
    for r in floor:
        print(f"{r['tower']:<6} {r['queries']:>7} {r['wall_ms']:>8} {r['cpu_ms']:>8} {r.get('p50_floor_8_clients_ms', ''):>21}")
    manifest = json.loads(knn.index_folder(lake, "research").read_bytes(knn.MANIFEST_FILE))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "index": {"vectors": args.n, "dim": DIM, "factory": manifest.get("factory")}, "model": MODEL,
        "goal": {"p50_ms": GOAL_P50_MS, "p95_ms": GOAL_P95_MS}, "max_query_batch": args.max_query_batch,
        "sides": sides, "rounds": args.rounds, "results": rows,
        **({"clip_back": {"peer": CLIP_BACK_PEER, "metadata": args.clip_back_metadata,
                          "differences": list(CLIP_BACK_DIFFERENCES)}} if "clip_back" in sides else {}),
        **({"clip_back_skipped": skipped} if skipped else {}),
        "forward_floor": floor,
        "load_average_after": os.getloadavg()[0]}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
