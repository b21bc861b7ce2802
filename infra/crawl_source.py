"""Where a crawl's WARC files are: a local folder of .warc.gz, or a Common Crawl-style listing.

A listing (``warc.paths`` or ``warc.paths.gz``) holds one path per line, relative to
``crawl.base_url`` (e.g. ``https://data.commoncrawl.org/``) or to the listing's own folder.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import fsspec

from infra.config import CrawlConfig


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


def _read_listing(source: str) -> list[str]:
    try:
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
        files = [WarcFile(p.rsplit("/", 1)[-1], base.rstrip("/") + "/" + p.lstrip("/"), None) for p in _read_listing(source)]
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
