"""Where a crawl's WARC files are: a folder of .warc.gz (local or ``s3://bucket/prefix``), or a
Common Crawl-style listing.

A listing (``warc.paths`` or ``warc.paths.gz``) holds one path per line, relative to
``crawl.base_url`` (e.g. ``https://data.commoncrawl.org/`` or ``s3://commoncrawl/``) or to the
listing's own folder. s3:// sources are reached with ``crawl.storage_options``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow.fs as pafs

from infra.config import CrawlConfig, StorageOptions
from infra.lake_storage import filesystem


class CrawlSourceError(ValueError):
    """The crawl source is missing, unreadable or lists nothing usable."""


@dataclass(frozen=True)
class WarcFile:
    warc_file: str  # the partition key: the file's name, unique within a crawl
    uri: str
    size_bytes: int | None


def _is_listing(source: str) -> bool:
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return name.endswith(".paths") or name.endswith(".paths.gz")


def _read_listing(source: str, storage: StorageOptions) -> list[str]:
    try:
        if source.startswith("s3://"):
            fs, path = filesystem(source, storage)
            with fs.open_input_stream(path, compression=None) as fh:
                raw = fh.read()
        else:
            with fsspec.open(source, "rb") as fh:
                raw = fh.read()
    except (OSError, ValueError) as exc:
        raise CrawlSourceError(f"cannot read crawl listing {source}: {exc}") from None
    if source.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise CrawlSourceError(f"crawl listing {source} is not valid gzip: {exc}") from None
    return [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]


def list_warc_files(crawl: CrawlConfig) -> list[WarcFile]:
    """The WARC files of ``crawl.source``, sorted by name; raises CrawlSourceError with one line."""
    source = crawl.source
    if not source:
        raise CrawlSourceError("config crawl.source is empty: name a folder of .warc.gz or a warc.paths listing")
    if _is_listing(source):
        base = crawl.base_url or source.rsplit("/", 1)[0] + "/"
        files = [WarcFile(p.rsplit("/", 1)[-1], base.rstrip("/") + "/" + p.lstrip("/"), None)
                 for p in _read_listing(source, crawl.storage_options)]
    elif source.startswith("s3://"):
        files = _bucket_folder(source, crawl.storage_options)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise CrawlSourceError(f"crawl source {source} is neither a folder nor a warc.paths(.gz) listing")
        files = [
            WarcFile(p.name, str(p.resolve()), p.stat().st_size)
            for p in folder.iterdir()
            if p.is_file() and (p.name.endswith(".warc.gz") or p.name.endswith(".warc"))
        ]
    names = [f.warc_file for f in files]
    if len(set(names)) != len(names):
        raise CrawlSourceError(f"crawl source {source} lists two WARC files with the same name")
    return sorted(files, key=lambda f: f.warc_file)


def _bucket_folder(source: str, storage: StorageOptions) -> list[WarcFile]:
    """The WARC files directly under an s3:// prefix."""
    fs, path = filesystem(source, storage)
    try:
        found = fs.get_file_info(pafs.FileSelector(path))
    except OSError as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CrawlSourceError(f"cannot list crawl source {source}: {detail}") from None
    return [WarcFile(info.base_name, f"s3://{info.path}", info.size) for info in found
            if info.type == pafs.FileType.File and info.base_name.endswith((".warc.gz", ".warc"))]
