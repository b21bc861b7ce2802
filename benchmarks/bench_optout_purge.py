"""Opt-out request → purged on a synthetic lake of ``--rows`` pairs: seconds in total and per phase.

Builds a lake (setup, timed per step but not part of the goal): candidates, images (200-600
random bytes per row in a JPEG frame, with their sha256/sha1/md5), clip_scores (64-d float16
embeddings, L2-normalised), kept_pairs, image_tags and dedup, one row per pair each, spread over
``--partitions`` WARC partitions and written in ``--commits`` commits per table (one Parquet file
per partition per commit); curated holds the two default variants, research (98% of the pairs)
and research-safe (``--safe-fraction`` of them). Then the kNN index of research
(``build_variant_index``) and release v1 of ``--release-variant`` (``make_release``,
``--samples-per-shard`` samples a shard), both as Spark jobs on local[2];
``--release-variant research-safe`` releases the smaller variant for a shorter setup.

Planted: one image URL shared by 3 pairs (different captions), 5 more pairs with the same image
bytes under other URLs, and a 9th pair that shares one of those other URLs with different bytes,
so a single ``url`` request must close over same_url → same_bytes → same_url (9 uids).

Timed: ``submit_request`` + ``apply_request_file`` (match, record, purge every sample table, kNN
indexes, release shards, audit) in a fresh process, as a pipeline run would, with the outcome's
per-phase seconds and that process's peak RSS. Checked after: no removed uid in any sample table,
the index or the shards, and no file under the lake root holds a removed URL or removed image
bytes, raw or in decoded Parquet columns.
Goal: 1,000,000 rows, request → purged in <= 300 s on a 2-core machine. Prints a table and writes
``benchmarks/results/optout_purge.json``; the machine is shared, so the load average is recorded.

    .venv/bin/python -m benchmarks.bench_optout_purge [--rows 1000000] [--partitions 100] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.bench_knn_index import clustered_embeddings, machine
from gpu_jobs.knn_index import index_folder, metadata_name
from infra.config import IndexConfig, ReleaseConfig, SparkConfig, load_config
from infra.delta_store import Lake, Lineage
from infra.tables import (
    CANDIDATES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, IMAGES, KEPT_PAIRS, REMOVALS, SAMPLE_TABLES, TableSpec,
)
from orchestration.optout_requests import apply_request_file, inbox_dir, submit_request
from infra.spark import build_spark_session
from spark_jobs import release
from spark_jobs.knn_index_job import build_variant_index
from spark_jobs.warc_pairs import pair_uid

RESULTS = Path(__file__).parent / "results" / "optout_purge.json"
# The curated variants and their punsafe limits (CurationConfig defaults): the index covers
# research (IndexConfig default), the release is research-safe (ReleaseConfig default).
VARIANTS = {"research": 0.95, "research-safe": 0.45}
INDEXED = "research"
MODEL_ID = "bench-synthetic/64d"
DIM = 64
CRAWL = "CC-MAIN-2024-10"
TARGET_URL = "http://a.example/opt-out/target.jpg"  # sorts first: it is a file's min in the log stats
REQUEST_ID = "bench-optout-0001"
FETCHED = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
WORDS = ("harbour", "mountain", "bicycle", "kitchen", "portrait", "forest", "market", "bridge", "garden", "train")
SAME_URL, SAME_BYTES = 3, 5  # planted: pairs of the target URL; other URLs with the same bytes


# -- the synthetic lake --------------------------------------------------------------------------

def _binary(sizes: np.ndarray, data: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(sizes), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _jpeg_like(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` distinct JPEG-framed random payloads (200-600 bytes): SOI/APP0 marker, noise, EOI."""
    sizes = rng.integers(200, 601, n).astype(np.int32)
    data = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for k, byte in enumerate(b"\xff\xd8\xff\xe0"):
        data[starts + k] = byte
    ends = starts + sizes
    data[ends - 2], data[ends - 1] = 0xFF, 0xD9
    return _binary(sizes, data)


def _embedding_column(x: np.ndarray) -> pa.Array:
    rows = np.ascontiguousarray(x.astype("<f2"))
    return _binary(np.full(len(rows), DIM * 2, np.int32), rows.view(np.uint8).reshape(-1))


class Pairs:
    """Every column the sample tables are made of, one row per pair, with the planted target."""

    def __init__(self, n: int, partitions: int, seed: int, safe_fraction: float) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        names = [f"{CRAWL}-{20240301000000 + 3 * k:014d}-{k:05d}.warc.gz" for k in range(partitions)]
        part = rng.integers(0, partitions, n)
        self.warc_file = pa.DictionaryArray.from_arrays(pa.array(part, pa.int32()), pa.array(names)).cast(pa.string())
        hosts = rng.integers(0, max(1, n // 200), n)
        urls = [f"https://img{h}.example.com/photos/{i:08d}.jpg" for i, h in enumerate(hosts.tolist())]
        captions = [f"a photo of a {WORDS[i % 10]} seen from the {WORDS[(i // 10) % 10]}, number {i}" for i in range(n)]
        images = _jpeg_like(rng, n)

        # The target: SAME_URL pairs of one URL (distinct captions) and SAME_BYTES pairs of the same
        # bytes under their own URLs, in random partitions; one more pair
        # shares the first same-bytes pair's URL with bytes of its own (a second closure round).
        planted = rng.choice(n, SAME_URL + SAME_BYTES + 1, replace=False)
        self.same_url, self.same_bytes, self.chained = planted[:SAME_URL], planted[SAME_URL:-1], planted[-1]
        for j, i in enumerate(self.same_url):
            urls[i], captions[i] = TARGET_URL, f"the opted-out photo, caption variant {j}"
        urls[self.chained] = urls[self.same_bytes[0]]
        captions[self.chained] = "another picture found at a URL of the opted-out image"
        shared = planted[: SAME_URL + SAME_BYTES]
        target_bytes = images[int(shared[0])].as_py()
        images = self._with_bytes(images, shared, target_bytes)
        self.image = images
        self.planted = sorted(int(i) for i in planted)
        self.removed_urls = sorted({urls[i] for i in self.planted})
        self.removed_images = sorted({images[i].as_py() for i in self.planted})

        self.url = pa.array(urls, pa.string())
        self.caption = pa.array(captions, pa.string())
        self.uid = pa.array([pair_uid(u, c) for u, c in zip(urls, captions)], pa.string())
        del urls, captions
        if pc.count_distinct(self.uid).as_py() != n:
            raise RuntimeError("synthetic uids collide")
        self.page_url = pa.array([f"https://site{h}.example.org/page/{i}.html" for i, h in enumerate(hosts.tolist())])
        digests = {"sha256": [], "sha1": [], "md5": []}
        offsets = np.frombuffer(images.buffers()[1], np.int32, n + 1, images.offset * 4)
        buf = memoryview(images.buffers()[2])
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            view = buf[start:end]
            digests["sha256"].append(hashlib.sha256(view).hexdigest())
            digests["sha1"].append(hashlib.sha1(view).hexdigest())
            digests["md5"].append(hashlib.md5(view).hexdigest())
        self.sha256, self.sha1, self.md5 = (pa.array(digests[k], pa.string()) for k in ("sha256", "sha1", "md5"))
        self.image_bytes = pc.binary_length(images).cast(pa.int64())

        x = clustered_embeddings(n, DIM, centres=1000, latent=16, seed=seed + 1)
        x[shared] = x[shared[0]]  # the same bytes give the same embedding
        t = x + rng.normal(0, 1.2 / np.sqrt(DIM), x.shape).astype(np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        self.image_embedding = _embedding_column(x)
        self.text_embedding = _embedding_column(t)
        self.similarity = pa.array((x * t).sum(axis=1).astype(np.float32) * 0.4)  # CLIP-like cosine scale
        del x, t
        # safe_fraction of the rows at or below research-safe's limit, 2% above research's.
        band = rng.choice(3, n, p=[safe_fraction, 0.98 - safe_fraction, 0.02])
        lo, hi = np.array([0.0, 0.45, 0.95])[band], np.array([0.45, 0.95, 1.0])[band]
        punsafe = rng.uniform(lo, hi).astype(np.float32)
        punsafe[band > 0] = np.maximum(punsafe[band > 0], np.nextafter(np.float32(0.45), np.float32(1)))
        punsafe[band > 1] = np.maximum(punsafe[band > 1], np.nextafter(np.float32(0.95), np.float32(1)))
        punsafe[planted] = 0.05  # the target is in both variants, so in the index and the release
        self.punsafe = pa.array(punsafe)
        self.pwatermark = pa.array(rng.uniform(0, 1, n).astype(np.float32))
        self.aesthetic = pa.array(rng.uniform(3, 7, n).astype(np.float32))
        rep = self.uid.take(pa.array(np.where(np.isin(np.arange(n), shared), shared[0], np.arange(n))))
        self.exact_representative = rep

    @staticmethod
    def _with_bytes(images: pa.Array, rows: np.ndarray, value: bytes) -> pa.Array:
        n = len(images)
        offsets = np.frombuffer(images.buffers()[1], np.int32, n + 1, images.offset * 4)
        sizes = np.diff(offsets).astype(np.int32)
        old = np.frombuffer(images.buffers()[2], np.uint8)
        sizes[rows] = len(value)
        new = np.empty(int(sizes.sum()), np.uint8)
        new_offsets = np.concatenate([[0], np.cumsum(sizes)])
        # Copy untouched rows in runs between planted rows, then the planted value.
        bounds = [-1, *sorted(int(r) for r in rows), n]
        for a, b in zip(bounds[:-1], bounds[1:]):
            lo, hi = a + 1, b
            if lo < hi:
                new[new_offsets[lo]:new_offsets[hi]] = old[offsets[lo]:offsets[hi]]
        for r in rows:
            new[new_offsets[r]:new_offsets[r + 1]] = np.frombuffer(value, np.uint8)
        return _binary(sizes, new)

    def columns(self, spec: TableSpec, rows: slice) -> pa.Table:
        """Rows ``rows`` of table ``spec``."""
        n = rows.stop - rows.start
        s = lambda a: a.slice(rows.start, n)  # noqa: E731
        const = lambda v, t: pa.repeat(pa.scalar(v, t), n)  # noqa: E731
        if spec is CANDIDATES:
            cols = {"uid": s(self.uid), "url": s(self.url), "caption": s(self.caption),
                    "page_url": s(self.page_url),
                    "crawl_id": const(CRAWL, pa.string()), "warc_file": s(self.warc_file),
                    "record_offset": pa.array(np.arange(rows.start, rows.stop, dtype=np.int64) * 4096),
                    "fetch_date": const(FETCHED, pa.timestamp("us", tz="UTC")), "optout_signal": const(None, pa.string())}
        elif spec is IMAGES:
            cols = {"uid": s(self.uid), "url": s(self.url), "warc_file": s(self.warc_file),
                    "status": const("ok", pa.string()), "error": const(None, pa.string()),
                    "error_detail": const(None, pa.string()),
                    "retryable": const(False, pa.bool_()), "http_status": const(200, pa.int32()),
                    "attempts": const(1, pa.int32()), "final_url": s(self.url),
                    "fetched_at": const(FETCHED, pa.timestamp("us", tz="UTC")), "image": s(self.image),
                    "image_format": const("jpeg", pa.string()), "width": const(256, pa.int32()),
                    "height": const(256, pa.int32()), "original_width": const(640, pa.int32()),
                    "original_height": const(480, pa.int32()), "original_bytes": s(self.image_bytes),
                    "sha256": s(self.sha256), "sha1": s(self.sha1), "md5": s(self.md5)}
        elif spec is CLIP_SCORES:
            cols = {"uid": s(self.uid), "warc_file": s(self.warc_file), "model_id": const(MODEL_ID, pa.string()),
                    "embedding_dim": const(DIM, pa.int32()), "image_embedding": s(self.image_embedding),
                    "text_embedding": s(self.text_embedding), "similarity": s(self.similarity)}
        elif spec is KEPT_PAIRS:
            cols = {"uid": s(self.uid), "warc_file": s(self.warc_file), "url": s(self.url), "caption": s(self.caption),
                    "language": const("en", pa.string()), "similarity": s(self.similarity),
                    "model_id": const(MODEL_ID, pa.string()), "width": const(256, pa.int32()),
                    "height": const(256, pa.int32()), "original_width": const(640, pa.int32()),
                    "original_height": const(480, pa.int32()), "sha256": s(self.sha256), "sha1": s(self.sha1),
                    "md5": s(self.md5)}
        elif spec is IMAGE_TAGS:
            cols = {"uid": s(self.uid), "warc_file": s(self.warc_file), "model_id": const(MODEL_ID, pa.string()),
                    "punsafe": s(self.punsafe), "pwatermark": s(self.pwatermark), "aesthetic": s(self.aesthetic),
                    "extra": const(None, IMAGE_TAGS.schema.field("extra").type),
                    "scorers": const('{"aesthetic": "bench", "punsafe": "bench", "pwatermark": "bench"}', pa.string())}
        elif spec is DEDUP:
            rep = s(self.exact_representative)
            dup = pc.not_equal(rep, s(self.uid))
            cols = {"uid": s(self.uid), "warc_file": s(self.warc_file), "sha256": s(self.sha256),
                    "exact_representative": rep, "cluster": rep, "cluster_size": const(1, pa.int64()),
                    "max_similarity": const(None, pa.float32()),
                    "reason": pc.if_else(dup, "exact_duplicate", "unique")}
        elif spec is CURATED:
            kept = self.columns(KEPT_PAIRS, rows)
            table = kept.append_column("punsafe", s(self.punsafe)).append_column("pwatermark", s(self.pwatermark))
            table = table.append_column("aesthetic", s(self.aesthetic))
            table = table.append_column("cluster_size", const(1, pa.int64()))
            parts = []
            for variant, limit in VARIANTS.items():
                rows_in = table.filter(pc.less_equal(table["punsafe"], limit))
                parts.append(rows_in.add_column(0, "variant", pa.repeat(pa.scalar(variant), rows_in.num_rows)))
            return pa.concat_tables(parts)
        else:
            raise ValueError(spec.name)
        return pa.table(cols)


def build_lake(lake: Lake, pairs: Pairs, commits: int, timings: dict[str, float]) -> None:
    lineage = Lineage(run_id="bench-setup")
    bounds = np.linspace(0, pairs.n, commits + 1).astype(int)
    for spec in (CANDIDATES, IMAGES, CLIP_SCORES, KEPT_PAIRS, IMAGE_TAGS, DEDUP, CURATED):
        start = time.perf_counter()
        for a, b in zip(bounds[:-1], bounds[1:]):
            lake.append(spec, pairs.columns(spec, slice(int(a), int(b))),
                        Lineage(run_id=lineage.run_id, asset_key=spec.name))
        timings[f"write {spec.name}"] = time.perf_counter() - start
        print(f"  wrote {spec.name} in {timings[f'write {spec.name}']:.1f}s", flush=True)


# -- checks --------------------------------------------------------------------------------------

def _buffers(array: pa.Array) -> list[pa.Buffer]:
    out = [b for b in array.buffers() if b is not None]
    if isinstance(array, pa.DictionaryArray):
        out += _buffers(array.dictionary)
    return out


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[int]]:
    """file -> indexes of the ``needles`` it holds, raw or inside any decoded Parquet column (every
    buffer of every column, nested ones included, so compression and encoding cannot hide a value)."""
    found: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        hits = {k for k, needle in enumerate(needles) if needle in data}
        del data
        if path.suffix == ".parquet" and len(hits) < len(needles):
            table = pq.read_table(path)
            for column in table.columns:
                for chunk in column.chunks:
                    for buf in _buffers(chunk):
                        raw = buf.to_pybytes()
                        hits |= {k for k, needle in enumerate(needles) if k not in hits and needle in raw}
            del table
        if hits:
            found[str(path.relative_to(root))] = sorted(hits)
    return found


def table_rows(lake: Lake) -> dict[str, int]:
    return {spec.name: lake.read(spec, columns=["uid"]).num_rows for spec in SAMPLE_TABLES if lake.table(spec)}


def leftover_uids(lake: Lake, uids: list[str]) -> dict[str, int]:
    """Rows still holding one of ``uids``: per sample table, the kNN index and the release shards."""
    wanted = pa.array(sorted(uids), pa.string())
    # Filtered in memory rather than pushed down: the check does not lean on the read path it checks
    # (and lakes purged through delta-rs's DELETE hold string_view files pyarrow cannot filter on).
    left = {}
    for spec in SAMPLE_TABLES:
        held = lake.read(spec, columns=["uid"])["uid"]
        left[spec.name] = pc.sum(pc.is_in(held, wanted)).as_py() or 0
    folder = index_folder(lake, INDEXED)
    ids = pq.read_table(folder.open(metadata_name(folder)), columns=["uid"])
    left["index uids"] = pc.sum(pc.is_in(ids["uid"], wanted)).as_py() or 0
    shards = 0
    for path in sorted((Path(lake.root) / "releases").rglob("[0-9]*.parquet")):
        held = pq.read_table(path, columns=["uid"])
        shards += pc.sum(pc.is_in(held["uid"], wanted)).as_py() or 0
    left["release shards"] = shards
    return left


def _rss_mb(field: str = "VmRSS") -> float | None:
    """Resident set size of this process now (VmRSS) or at its peak (VmHWM), in MiB (Linux).
    (getrusage's ru_maxrss is no use in a spawned child: it counts the parent's peak from before
    the exec.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class _Stopwatch:
    """Wraps module functions for the duration of a request and records seconds per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []  # (function, first argument's name, seconds)
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, module: object, name: str, label) -> None:  # noqa: ANN001
        original = getattr(module, name)

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.append((name, label(*args), time.perf_counter() - start))

        setattr(module, name, timed)
        self._undo.append((module, name, original))

    def restore(self) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)


def timed_request(root: str) -> dict:
    """Submit the url request and apply it (in a fresh process); seconds, peak RSS and outcome.

    Benchmark-only instrumentation splits the purge per table (delete vs vacuum + checkpoint +
    log truncation) and times each shard rewrite; the library code is unchanged."""
    from infra import purge as purge_module
    from spark_jobs import shard_export

    rss_after_imports = _rss_mb()
    watch = _Stopwatch()
    watch.wrap(purge_module, "delete_uids", lambda lake, spec, *a, **k: spec.name)
    watch.wrap(purge_module, "purge_history", lambda lake, spec, *a, **k: spec.name)
    watch.wrap(shard_export, "rewrite_shard", lambda source, shard, *a, **k: shard)
    config = load_config(overrides={"lake": {"root": root}})
    cpu0 = time.process_time()
    start = time.perf_counter()
    try:
        name = submit_request(config, {"request_id": REQUEST_ID, "requester": "bench", "reason": "benchmark",
                                       "kind": "url", "value": TARGET_URL})
        submitted = time.perf_counter()
        outcome = apply_request_file(config, inbox_dir(config), name, Lineage(run_id="bench"))
        total = time.perf_counter() - start
    finally:
        watch.restore()
    table_s: dict[str, dict[str, float]] = {}
    for name, table, seconds in watch.calls:
        if name in ("delete_uids", "purge_history"):
            key = "delete_s" if name == "delete_uids" else "vacuum_checkpoint_s"
            table_s.setdefault(table, {})[key] = round(seconds, 2)
    return {
        "request_to_purged_s": round(total, 2), "submit_s": round(submitted - start, 3),
        "cpu_s": round(time.process_time() - cpu0, 2),
        "peak_rss_mb": round(_rss_mb("VmHWM") or 0),
        "rss_after_imports_mb": None if rss_after_imports is None else round(rss_after_imports),
        "outcome": asdict(outcome), "table_s": table_s,
        "shard_rewrite_s": {shard: round(seconds, 2) for name, shard, seconds in watch.calls
                            if name == "rewrite_shard"},
    }


# -- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=100, help="WARC partitions of the lake")
    parser.add_argument("--commits", type=int, default=2, help="commits per table (Parquet files per partition)")
    parser.add_argument("--samples-per-shard", type=int, default=10_000)
    parser.add_argument("--lake-dir", type=Path, default=None, help="where to build the lake (must not exist; "
                        "default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the lake directory afterwards")
    parser.add_argument("--safe-fraction", type=float, default=0.2, help="share of the pairs in curated research-safe")
    parser.add_argument("--release-variant", choices=sorted(VARIANTS), default=INDEXED,
                        help="curated variant released (research: 98%% of the pairs; research-safe: --safe-fraction)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.lake_dir is not None:
        if args.lake_dir.exists() and any(args.lake_dir.iterdir()):
            parser.error(f"--lake-dir {args.lake_dir} exists and is not empty")
        root = args.lake_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-optout-"))
    load_before = os.getloadavg()[0]
    print(f"lake at {root}: {args.rows:,} pairs over {args.partitions} partitions, {args.commits} commits per table",
          flush=True)
    try:
        results = run(root, args, load_before)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}" + (f"; lake kept at {root}" if args.keep else ""))


def run(root: Path, args: argparse.Namespace, load_before: float) -> dict:
    setup: dict[str, float] = {}
    start = time.perf_counter()
    pairs = Pairs(args.rows, args.partitions, args.seed, args.safe_fraction)
    setup["generate"] = time.perf_counter() - start
    print(f"  generated in {setup['generate']:.1f}s", flush=True)

    lake = Lake(str(root))
    build_lake(lake, pairs, args.commits, setup)
    planted_uids = sorted(pairs.uid.take(pa.array(pairs.planted)).to_pylist())
    needles = [u.encode() for u in pairs.removed_urls] + pairs.removed_images
    needle_names = [f"url {u}" for u in pairs.removed_urls]
    needle_names += [f"image bytes sha256 {hashlib.sha256(b).hexdigest()[:12]}" for b in pairs.removed_images]
    del pairs

    spark = build_spark_session(SparkConfig(master="local[2]", app_name="bench-optout-purge"))
    start = time.perf_counter()
    manifest = build_variant_index(spark, lake, IndexConfig(variant=INDEXED), MODEL_ID, Lineage(run_id="bench-setup"))
    setup["kNN index"] = time.perf_counter() - start
    print(f"  index {manifest['factory']} over {manifest['vectors']:,} vectors in {setup['kNN index']:.1f}s "
          f"(recall@10 {manifest['recall_at_10']})", flush=True)

    start = time.perf_counter()
    rel = release.make_release(
        spark,
        lake,
        ReleaseConfig(name="bench-release", variant=args.release_variant, samples_per_shard=args.samples_per_shard),
        rules={"benchmark": "bench_optout_purge"}, source_versions={"curated": lake.version(CURATED)},
        lineage=Lineage(run_id="bench-setup"),
    )
    setup["release v1"] = time.perf_counter() - start
    spark.stop()
    print(f"  release v1: {rel.samples:,} samples in {rel.shards} shards in {setup['release v1']:.1f}s", flush=True)

    start = time.perf_counter()
    rows_before = table_rows(lake)
    before_hits = files_holding(root, needles)
    setup["scan before"] = time.perf_counter() - start
    lake_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"  before: removed URLs/bytes found in {len(before_hits)} files (scan {setup['scan before']:.1f}s); "
          f"lake {lake_bytes / 2**30:.2f} GiB", flush=True)
    setup_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The request runs in a fresh process, as a pipeline run would: its peak RSS is the request's.
    load_at_request = os.getloadavg()[0]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        timed = pool.submit(timed_request, str(root)).result()
    outcome = timed["outcome"]
    total_s = timed["request_to_purged_s"]
    print(f"request → purged in {total_s:.1f}s ({outcome['status']}, {outcome['matched']} uids)", flush=True)

    start = time.perf_counter()
    rows_after = table_rows(lake)
    removed = lake.read(REMOVALS, columns=["uid"], filter=pc.field("request_id") == REQUEST_ID)["uid"].to_pylist()
    left = leftover_uids(lake, planted_uids)
    after_hits = {f: [needle_names[k] for k in ks] for f, ks in files_holding(root, needles).items()}
    verify_s = time.perf_counter() - start
    verified = {
        "removed_uids_are_the_planted_ones": sorted(removed) == planted_uids,
        "no_removed_uid_left": not any(left.values()),
        "rows_gone_match_rows_deleted": all(
            rows_before.get(p["table"], 0) - rows_after.get(p["table"], 0) == p["rows_deleted"]
            for p in outcome["purges"]),
        "scan_found_needles_before": len(before_hits) > 0,
        "no_file_holds_removed_url_or_bytes": not after_hits,
    }
    ok = all(verified.values())

    purges = {p["table"]: {"rows_before": rows_before.get(p["table"], 0), "rows_deleted": p["rows_deleted"],
                           "files_vacuumed": p["files_vacuumed"], "log_entries_removed": p["log_entries_removed"],
                           **timed["table_s"].get(p["table"], {})}
              for p in outcome["purges"]}
    results = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_1m_at_start": load_before,
                    "load_average_1m_at_request": load_at_request},
        "rows": args.rows, "partitions": args.partitions, "commits_per_table": args.commits,
        "samples_per_shard": args.samples_per_shard, "lake_gib": round(lake_bytes / 2**30, 3),
        "safe_fraction": args.safe_fraction,
        "index": {k: manifest[k] for k in ("variant", "factory", "vectors", "dim", "recall_at_10", "plan_reason")},
        "release": {"variant": args.release_variant, "samples": rel.samples, "shards": rel.shards},
        "setup_s": {k: round(v, 2) for k, v in setup.items()},
        "setup_peak_rss_mb": round(setup_peak_mb),
        "request_to_purged_s": round(total_s, 2),
        "submit_s": timed["submit_s"],
        "phases_s": outcome["seconds"],
        "purge_cpu_s": timed["cpu_s"],
        "purge_peak_rss_mb": timed["peak_rss_mb"],
        "purge_rss_after_imports_mb": timed["rss_after_imports_mb"],
        "uids_removed": outcome["matched"],
        "planted_uids": len(planted_uids),
        "tables": purges,
        "index_vectors_removed": outcome["index_vectors_removed"],
        "shards_rewritten": outcome["shards_rewritten"],
        "shard_rewrite_s": timed["shard_rewrite_s"],
        "verification": verified,
        "verification_leftovers": left,
        "files_with_needles_before": len(before_hits),
        "files_with_needles_after": after_hits,
        "needles": needle_names,
        "verify_s": round(verify_s, 1),
        "goal_met": ok and total_s <= 300,
    }
    print_table(results)
    return results


def print_table(r: dict) -> None:
    print(f"\nopt-out purge on {r['rows']:,} pairs, {r['partitions']} partitions x {r['commits_per_table']} commits; "
          f"lake {r['lake_gib']:.2f} GiB; load average {r['machine']['load_average_1m_at_request']:.1f} at the request "
          f"on {r['machine']['cpus']} cpus")
    print(f"  {'table':<17} {'rows':>10} {'deleted':>8} {'vacuumed':>9} {'log removed':>11} {'delete s':>9} "
          f"{'vacuum+ckpt s':>13}")
    for name, t in r["tables"].items():
        print(f"  {name:<17} {t['rows_before']:>10,} {t['rows_deleted']:>8} {t['files_vacuumed']:>9} "
              f"{t['log_entries_removed']:>11} {t.get('delete_s', 0):>9.2f} {t.get('vacuum_checkpoint_s', 0):>13.2f}")
    print(f"  index of {r['index']['variant']}, {r['index']['factory']} ({r['index']['vectors']:,} vectors): "
          f"removed {r['index_vectors_removed']}; release of {r['release']['variant']}, {r['release']['samples']:,} "
          f"samples / {r['release']['shards']} shards: "
          f"{len(r['shards_rewritten'])} rewritten ({sum(r['shard_rewrite_s'].values()):.1f}s in rewrite_shard)")
    print("  setup (not timed in the goal): " + ", ".join(f"{k} {v:.1f}s" for k, v in r["setup_s"].items())
          + f"; peak RSS {r['setup_peak_rss_mb']:,} MiB")
    print(f"  {'phase':<14} {'seconds':>8}")
    for name, s in r["phases_s"].items():
        print(f"  {name:<14} {s:>8.1f}")
    print(f"  {'request→purged':<14} {r['request_to_purged_s']:>8.1f}  (CPU {r['purge_cpu_s']:.1f}s; peak RSS "
          f"{r['purge_peak_rss_mb']:,} MiB, {r['purge_rss_after_imports_mb']} MiB of it after imports); "
          f"{r['uids_removed']} uids removed ({r['planted_uids']} planted)")
    print("verification: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in r["verification"].items()))
    if r["files_with_needles_after"]:
        print(f"  files still holding removed data: {r['files_with_needles_after']}")
    if any(r["verification_leftovers"].values()):
        print(f"  uids left: {r['verification_leftovers']}")
    print(f"goal (<= 300 s and verified): {'met' if r['goal_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
