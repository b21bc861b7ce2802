"""WARC → candidate (image URL, alt text) pairs, in pure Python: one call per WARC file.

Called by the Spark job and the Dagster asset (one task per file) and by ``pairlake parse-warc``.
Bad records are counted and recorded as WARC_REJECTS rows, never fatal; pairs already found are
kept. Only a WARC file that cannot be opened or read at all (missing, I/O error, not a
record-gzipped WARC) raises: that is the caller's error, not a skip.

Per file: gzip members → WARC records (warc_reader) → HTTP head and body (http_response) → UTF-8
page (page_charset) → <img> candidates and the page's own opt-out signal (html_images; a page over
the parse budget is a reject) → uid dedup within the page → Arrow batches of ``batch_rows`` pairs,
passed on as they fill, so that memory does not grow with the file. A pair repeated on later pages
or in other files is dropped by the candidates stage, which sees the whole run. Captions'
languages are identified later, for the kept pairs only (``kept_set``): most candidates never get
that far.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Iterator, Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from infra.config import ExtractConfig, InputError, StorageOptions
from infra.lake_storage import atomic_output
from infra.tables import CANDIDATES, WARC_REJECTS
from spark_jobs.html_images import META_ROBOTS, TDM_META, PageImages, PageTooComplex, page_images
from spark_jobs.http_response import BadHttpHeaders, BodyTooLarge, UndecodableBody, decode_body, parse_head
from spark_jobs.page_charset import UndecodablePage, charset_from_content_type, to_utf8
from spark_jobs.warc_input import open_warc
from spark_jobs.warc_reader import RecordError, WarcRecord, read_records

# Every counter, present (maybe 0) in every result so that funnels line up across files.
COUNTERS = (
    # funnel
    "records",
    "responses",
    "html_pages",
    "images_seen",
    "pairs",
    # responses skipped
    "non_http_response",
    "non_html",
    "non_2xx_status",
    "page_too_large",
    # images dropped
    "no_alt",
    "empty_alt",
    "no_src",
    "non_http_url",
    "caption_too_short",
    "caption_too_long",
    "duplicate_uid",  # repeated on its page; repeats across pages: the candidates stage
    # pairs (of "pairs") whose page opts its images out: optout_signal meta-robots / tdm-meta
    "optout_meta_robots",
    "optout_tdm_meta",
    # rejects (one WARC_REJECTS row each)
    "malformed_record",
    "truncated_record",
    "bad_http_headers",
    "undecodable_page",
    "page_too_complex",
)
_SIGNAL_COUNTERS = {META_ROBOTS: "optout_meta_robots", TDM_META: "optout_tdm_meta"}
# Room for the HTTP status line and headers on top of max_page_bytes of body.
_HTTP_HEAD_ROOM = 1 << 16
_DETAIL_CHARS = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pair_uid(url: str, caption: str) -> str:
    """Stable pair id: the first 32 hex digits of sha256(url + "\\n" + caption)."""
    return hashlib.sha256(f"{url}\n{caption}".encode()).hexdigest()[:32]


@dataclass
class ExtractResult:
    pairs: pa.Table  # CANDIDATES.schema, in file order, unique by uid within each page
    rejects: pa.Table  # WARC_REJECTS.schema
    counts: dict[str, int]


_PAIR_COLUMNS = ("uid", "url", "caption", "page_url", "record_offset", "fetch_date", "optout_signal")
_REJECT_COLUMNS = ("record_offset", "page_url", "reason", "detail")
Batch = tuple[Literal["pairs", "rejects"], pa.RecordBatch]


class WarcExtraction:
    """One WARC file's extraction, streamed: iterating yields ("pairs", CANDIDATES batch) and
    ("rejects", WARC_REJECTS batch) in file order, each of at most ``config.batch_rows`` rows;
    ``counts`` is complete once the iteration ends.

    Raises FileNotFoundError / OSError naming the file when it cannot be opened or read, and
    ValueError for an uncompressed WARC or a file that is not a WARC at all; batches yielded
    before such an error belong to a file that was not read whole.
    """

    def __init__(self, warc_uri: str, warc_file: str, crawl_id: str, config: ExtractConfig,
                 storage: StorageOptions | None = None) -> None:
        self.warc_uri = warc_uri
        self.warc_file = warc_file
        self.crawl_id = crawl_id
        self.config = config
        self.storage = storage
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._pairs: dict[str, list] = {n: [] for n in _PAIR_COLUMNS}
        self._rejects: dict[str, list] = {n: [] for n in _REJECT_COLUMNS}

    def __iter__(self) -> Iterator[Batch]:
        max_block = self.config.max_page_bytes + _HTTP_HEAD_ROOM
        limit = self.config.batch_rows
        try:
            with open_warc(self.warc_uri, self.config, self.storage) as fh:
                for item in read_records(fh, max_block):
                    if isinstance(item, RecordError):
                        self._reject(item.offset, item.target_uri, item.reason, item.detail)
                    else:
                        self._record(item)
                    if len(self._pairs["uid"]) >= limit:
                        yield "pairs", self._pair_batch()
                    if len(self._rejects["reason"]) >= limit:
                        yield "rejects", self._reject_batch()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"WARC file not found: {self.warc_uri}") from exc
        except OSError as exc:
            raise OSError(f"cannot read WARC file {self.warc_uri}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{self.warc_uri}: {exc}") from exc
        if self._pairs["uid"]:
            yield "pairs", self._pair_batch()
        if self._rejects["reason"]:
            yield "rejects", self._reject_batch()

    def _reject(self, offset: int, page_url: str | None, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self._rejects["record_offset"].append(offset)
        self._rejects["page_url"].append(page_url)
        self._rejects["reason"].append(reason)
        self._rejects["detail"].append(detail[:_DETAIL_CHARS])

    def _record(self, record: WarcRecord) -> None:
        counts = self.counts
        counts["records"] += 1
        if record.warc_type != "response":
            return
        counts["responses"] += 1
        headers = record.headers
        page_url = headers.get("warc-target-uri", "")
        if not headers.get("content-type", "application/http").lower().startswith("application/http"):
            counts["non_http_response"] += 1  # dns:, whois:, ... captures
            return
        block = record.block
        try:
            response = parse_head(block)
        except BadHttpHeaders as exc:
            self._reject(record.offset, page_url, "bad_http_headers", str(exc))
            return
        content_type = response.headers.get("content-type", "")
        if content_type:
            is_html = "html" in content_type.lower()
        else:  # no Content-Type: look at the body
            is_html = _looks_like_html(block[response.head_length : response.head_length + 512])
        if not is_html:
            counts["non_html"] += 1
            return
        if not 200 <= response.status < 300:
            counts["non_2xx_status"] += 1
            return
        counts["html_pages"] += 1
        max_bytes = self.config.max_page_bytes
        if record.block_length - response.head_length > max_bytes or len(block) < record.block_length:
            counts["page_too_large"] += 1
            return
        try:
            body = decode_body(response, block[response.head_length :], max_bytes)
            page = to_utf8(body, charset_from_content_type(content_type))
        except BodyTooLarge:
            counts["page_too_large"] += 1
            return
        except (UndecodableBody, UndecodablePage) as exc:
            self._reject(record.offset, page_url, "undecodable_page", str(exc))
            return
        try:
            found = page_images(page, page_url, self.config, counts)
        except PageTooComplex as exc:
            self._reject(record.offset, page_url, "page_too_complex", str(exc))
            return
        if found.pairs:
            self._add_pairs(found, record.offset, page_url, _warc_date_us(headers.get("warc-date")))

    def _add_pairs(self, found: PageImages, offset: int, page_url: str, fetch_date: int | None) -> None:
        cols = self._pairs
        seen: set[str] = set()  # a page's own repeats; bounded by the page
        for url, caption in found.pairs:
            uid = pair_uid(url, caption)
            if uid in seen:
                self.counts["duplicate_uid"] += 1
                continue
            seen.add(uid)
            cols["uid"].append(uid)
            cols["url"].append(url)
            cols["caption"].append(caption)
            cols["page_url"].append(page_url)
            cols["record_offset"].append(offset)
            cols["fetch_date"].append(fetch_date)
            cols["optout_signal"].append(found.optout)
            self.counts["pairs"] += 1
            if found.optout:
                self.counts[_SIGNAL_COUNTERS[found.optout]] += 1

    def _pair_batch(self) -> pa.RecordBatch:
        cols, self._pairs = self._pairs, {n: [] for n in _PAIR_COLUMNS}
        n = len(cols["uid"])
        return pa.RecordBatch.from_arrays(
            [
                pa.array(cols["uid"], pa.string()),
                pa.array(cols["url"], pa.string()),
                pa.array(cols["caption"], pa.string()),
                pa.array(cols["page_url"], pa.string()),
                pa.repeat(pa.scalar(self.crawl_id, pa.string()), n),
                pa.repeat(pa.scalar(self.warc_file, pa.string()), n),
                pa.array(cols["record_offset"], pa.int64()),
                # As integers: pyarrow converts datetime objects at ~6 µs each, 8% of the extraction.
                pa.array(cols["fetch_date"], pa.int64()).cast(CANDIDATES.schema.field("fetch_date").type),
                pa.array(cols["optout_signal"], pa.string()),
            ],
            schema=CANDIDATES.schema,
        )

    def _reject_batch(self) -> pa.RecordBatch:
        r, self._rejects = self._rejects, {n: [] for n in _REJECT_COLUMNS}
        return pa.RecordBatch.from_arrays(
            [
                pa.repeat(pa.scalar(self.warc_file, pa.string()), len(r["reason"])),
                pa.array(r["record_offset"], pa.int64()),
                pa.array(r["page_url"], pa.string()),
                pa.array(r["reason"], pa.string()),
                pa.array(r["detail"], pa.string()),
            ],
            schema=WARC_REJECTS.schema,
        )


def _looks_like_html(body_start: bytes) -> bool:
    return body_start.lstrip().lower().startswith((b"<!doctype html", b"<html"))


def _warc_date_us(value: str | None) -> int | None:
    """WARC-Date as microseconds since the epoch (UTC when it names no zone); None if absent or unreadable."""
    if not value:
        return None
    try:
        date = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ((date.replace(tzinfo=UTC) if date.tzinfo is None else date) - _EPOCH) // _MICROSECOND


def extract_pairs(warc_uri: str, warc_file: str, crawl_id: str, config: ExtractConfig,
                  storage: StorageOptions | None = None) -> ExtractResult:
    """One WARC file's pairs, rejects and counts, gathered in memory: for a file known to be small
    (tests, a look at one file). Jobs stream ``WarcExtraction``. Raises as it does."""
    extraction = WarcExtraction(warc_uri, warc_file, crawl_id, config, storage)
    batches: dict[str, list[pa.RecordBatch]] = {"pairs": [], "rejects": []}
    for kind, batch in extraction:
        batches[kind].append(batch)
    return ExtractResult(pa.Table.from_batches(batches["pairs"], CANDIDATES.schema),
                         pa.Table.from_batches(batches["rejects"], WARC_REJECTS.schema), extraction.counts)


def warc_file_name(warc_uri: str) -> str:
    """The partition key for a WARC URI: its file name."""
    return os.path.basename(urlsplit(warc_uri).path if "://" in warc_uri else warc_uri)


def write_pairs_parquet(warc_uris: list[str], out: str, crawl_id: str, config: ExtractConfig) -> dict[str, int]:
    """Extract each file into one Parquet file of CANDIDATES rows (unique by uid within each page;
    the candidates stage drops repeats across pages) at the local path ``out``, a row group per
    ``config.batch_rows`` pairs; returns the counts summed over the files.

    ``out`` is written whole or not at all (a temporary file beside it, renamed at the end). Raises
    InputError, writing nothing, for an input that is missing, a directory or not a record-gzipped
    WARC, and for an ``out`` that is a directory or in a missing folder.
    """
    _check_paths(warc_uris, out)
    totals = dict.fromkeys(COUNTERS, 0)
    with atomic_output(os.path.abspath(out)) as fh, pq.ParquetWriter(fh, CANDIDATES.schema) as writer:
        for uri in warc_uris:
            extraction = WarcExtraction(uri, warc_file_name(uri), crawl_id, config)
            try:
                for kind, batch in extraction:
                    if kind == "pairs":
                        writer.write_batch(batch)
            except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
                raise InputError(str(exc)) from None
            for counter, value in extraction.counts.items():
                totals[counter] += value
    return totals


def _check_paths(warc_uris: list[str], out: str) -> None:
    """Refuse what can be told before reading anything: local inputs that are not files, and an
    output that is a directory or whose folder does not exist."""
    for uri in warc_uris:
        if "://" in uri:
            continue  # fsspec URLs are checked by opening them
        if os.path.isdir(uri):
            raise InputError(f"{uri} is a directory, not a WARC file")
        if not os.path.exists(uri):
            raise InputError(f"WARC file not found: {uri}")
    if os.path.isdir(out):
        example = os.path.join(out, "pairs.parquet")
        raise InputError(f"output {out} is a directory: name the Parquet file to write, e.g. {example}")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InputError(f"output folder {folder} does not exist")
