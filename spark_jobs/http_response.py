"""Split the HTTP response stored in a WARC response record into status, headers and body.

Common Crawl stores bodies already de-chunked and decompressed (renaming the headers to
X-Crawler-*), but other crawlers (wget, Heritrix, Browsertrix) store the bytes as sent, so
chunked transfer coding and gzip/deflate content coding are undone here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


class BadHttpHeaders(ValueError):
    """The record block does not start with a parseable HTTP status line and header block."""


class UndecodableBody(ValueError):
    """The body uses a transfer or content coding that cannot be undone."""


class BodyTooLarge(ValueError):
    """The decoded body is larger than allowed."""


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lowercased; a repeated header keeps its last value
    head_length: int  # bytes of status line and headers, blank line included


def parse_head(block: bytes) -> HttpResponse:
    """Parse the status line and headers at the start of ``block``."""
    end = block.find(b"\r\n\r\n")
    sep_len = 4
    if end < 0:  # a few servers end header lines with bare LF
        end, sep_len = block.find(b"\n\n"), 2
    if end < 0 or not block.startswith(b"HTTP/"):
        raise BadHttpHeaders("no HTTP status line and header block")
    lines = block[:end].decode("latin-1").split("\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[1].isdecimal():
        raise BadHttpHeaders(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return HttpResponse(int(parts[1]), headers, end + sep_len)


def decode_body(response: HttpResponse, body: bytes, max_bytes: int) -> bytes:
    """Undo chunked transfer coding and gzip/deflate content coding, keeping at most ``max_bytes``."""
    if "chunked" in response.headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    coding = response.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip", "deflate"):
        # wbits 47 reads gzip or zlib; raw deflate (what some servers mean by "deflate") needs -15.
        for wbits in (47, -15):
            d = zlib.decompressobj(wbits)
            try:
                out = d.decompress(body, max_bytes + 1)
            except zlib.error:
                continue
            if len(out) > max_bytes:
                raise BodyTooLarge(f"content-encoding {coding} inflates past {max_bytes} bytes")
            return out
        raise UndecodableBody(f"corrupt {coding} content-encoding")
    raise UndecodableBody(f"unsupported content-encoding {coding!r}")


def _dechunk(body: bytes) -> bytes:
    parts: list[bytes] = []
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:  # a truncated capture: keep what arrived
            return b"".join(parts)
        try:
            size = int(body[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            raise UndecodableBody("bad chunked transfer-encoding") from None
        if size == 0:
            return b"".join(parts)
        parts.append(body[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
