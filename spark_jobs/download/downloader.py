"""The download stage: candidates (uid, url, warc_file) → exactly one IMAGES row per candidate.

``download_batch`` runs its own event loop, so it is callable from Spark ``mapInArrow`` tasks and
from tests alike. Each distinct URL is fetched once per batch; URLs are interleaved by host so that
one big host does not fill the pipeline while others wait. Decoding runs on a small thread pool
(Pillow releases the GIL) so that the event loop keeps serving network I/O meanwhile; the pool's
decodes share one ``DecodeBudget`` (``decode_memory_mb``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, TypeVar

import pyarrow as pa
from tqdm import tqdm
from yarl import URL

from infra.config import DownloadConfig
from infra.tables import IMAGES
from spark_jobs.download.decode_budget import DecodeBudget
from spark_jobs.download.fetcher import Fetcher
from spark_jobs.download.origin_policies import PolicyAnswers
from spark_jobs.download.hosts import HostKey, host_key
from spark_jobs.download.resizer import ImageRejected, ResizedImage, resize_image

T = TypeVar("T")
Outcome = dict[str, Any]  # the IMAGES columns other than uid, url and warc_file


def download_batch(
    candidates: pa.Table, config: DownloadConfig, *, progress: bool = False, decode_threads: int | None = None,
    policy_answers: PolicyAnswers | None = None,
) -> pa.Table:
    """Fetch and resize every candidate's image → a table with ``IMAGES.schema``, one row per input row.

    Never raises for a bad URL, host or image: each row gets status "ok" or "failed" with a reason.
    ``progress`` shows a tqdm bar (off by default: executors stay quiet). ``policy_answers``, kept
    by the caller between batches, saves asking an origin for its robots.txt (and the like) again.
    """
    urls = ["" if u is None else u for u in candidates.column("url").to_pylist()]
    threads = decode_threads or min(4, os.cpu_count() or 1)
    outcomes = _run(_download_all(_interleave_by_host(dict.fromkeys(urls)), config, progress, threads,
                                  policy_answers))
    rows = [
        {"uid": uid, "url": url, "warc_file": warc_file, **outcomes[url]}
        for uid, url, warc_file in zip(
            candidates.column("uid").to_pylist(), urls, candidates.column("warc_file").to_pylist()
        )
    ]
    return pa.Table.from_pylist(rows, schema=IMAGES.schema)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from async code (a notebook, an async op): run on a private thread's own loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _host(url: str) -> HostKey | None:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return None
    return host_key(parsed) if parsed.host and parsed.port else None


def _interleave_by_host(urls: Iterable[str]) -> list[str]:
    """Round-robin over hosts: a, b, c, a, b, a, ... instead of a, a, a, b, b, c."""
    by_host: dict[HostKey | None, list[str]] = {}
    for url in urls:
        by_host.setdefault(_host(url), []).append(url)
    return [url for group in itertools.zip_longest(*by_host.values()) for url in group if url is not None]


async def _download_all(urls: list[str], config: DownloadConfig, progress: bool, threads: int,
                        policy_answers: PolicyAnswers | None) -> dict[str, Outcome]:
    # URLs between "fetch started" and "decoded" are bounded, and their tasks created only as slots
    # free up: the original bodies held in memory stay bounded when decoding is slower than the
    # network (the usual case on one executor core), and a task's share of 100k rows costs no more.
    window = asyncio.Semaphore(2 * config.concurrency)
    budget = DecodeBudget.of(config)
    outcomes: dict[str, Outcome] = {}
    running: set[asyncio.Task[None]] = set()
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="pairlake-decode") as pool,
        tqdm(total=len(urls), unit="img", desc="download", disable=not progress) as bar,
    ):
        async with Fetcher(config, policy_answers) as fetcher:

            async def one(url: str) -> None:
                try:
                    outcomes[url] = await _download_one(fetcher, pool, budget, url, config)
                finally:
                    window.release()
                    bar.update()

            for url in urls:
                await window.acquire()
                task = asyncio.create_task(one(url))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
    return outcomes


async def _download_one(
    fetcher: Fetcher, pool: ThreadPoolExecutor, budget: DecodeBudget, url: str, config: DownloadConfig
) -> Outcome:
    try:
        result = await fetcher.fetch(url)
        fetched = {"http_status": result.http_status, "attempts": result.attempts, "final_url": result.final_url}
        if result.body is None:
            assert result.error is not None
            return _failed(result.error, result.detail, result.retryable, **fetched)
        try:
            image, digests = await asyncio.get_running_loop().run_in_executor(
                pool, _process, result.body, config, budget
            )
        except ImageRejected as exc:
            return _failed(exc.reason, exc.detail, False, **fetched)
        return {
            "status": "ok",
            "error": None,
            "error_detail": None,
            "retryable": False,
            **fetched,
            "fetched_at": datetime.now(timezone.utc),
            "image": image.data,
            "image_format": image.format,
            "width": image.width,
            "height": image.height,
            "original_width": image.original_width,
            "original_height": image.original_height,
            "original_bytes": len(result.body),
            **digests,
        }
    except Exception as exc:  # a bug costs one row, not the batch (and a Spark task retry)
        return _failed("internal_error", f"{type(exc).__name__}: {exc}"[:300], False, attempts=1)


# Hash lists (Re-LAION's among them) come as MD5, SHA1 or SHA256 of the original bytes; storing all
# three lets any list match without fetching an image again.
DIGESTS = ("sha256", "sha1", "md5")


def _process(body: bytes, config: DownloadConfig, budget: DecodeBudget) -> tuple[ResizedImage, dict[str, str]]:
    """Runs on the decode pool: resize plus the hashes of the original bytes."""
    return resize_image(body, config, budget), {name: hashlib.new(name, body).hexdigest() for name in DIGESTS}


def _failed(
    reason: str,
    detail: str | None,
    retryable: bool,
    *,
    attempts: int,
    http_status: int | None = None,
    final_url: str | None = None,
) -> Outcome:
    return {
        "status": "failed",
        "error": reason,
        "error_detail": detail,
        "retryable": retryable,
        "http_status": http_status,
        "attempts": attempts,
        "final_url": final_url,
        "fetched_at": datetime.now(timezone.utc),
    }
