"""A lake of a few downloaded samples, for opt-out matching tests: candidates and ok images of
(uid, url, image bytes) pairs, all in one WARC partition."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa

from infra.delta_store import Lake, Lineage
from infra.tables import CANDIDATES, IMAGES

FETCHED_AT = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def fill_samples(lake: Lake, pairs: list[tuple[str, str, bytes]]) -> Lake:
    lake.replace_partitions(CANDIDATES, pa.Table.from_pylist(
        [{"uid": u, "url": url, "caption": u, "page_url": "http://p.example/", "crawl_id": "c", "warc_file": "w",
          "record_offset": 0} for u, url, _ in pairs], schema=CANDIDATES.schema), ["w"], Lineage())
    lake.replace_partitions(IMAGES, pa.Table.from_pylist(
        [{"uid": u, "url": url, "final_url": url, "warc_file": "w", "status": "ok", "retryable": False, "attempts": 1,
          "fetched_at": FETCHED_AT, "image": data, "sha256": hashlib.sha256(data).hexdigest(),
          "md5": hashlib.md5(data).hexdigest()} for u, url, data in pairs], schema=IMAGES.schema), ["w"], Lineage())
    return lake
