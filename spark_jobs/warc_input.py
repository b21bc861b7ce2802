"""Open a WARC file for one sequential pass: a local path, s3:// (with ``crawl.storage_options``),
http(s)://, or another fsspec URL.

Over http(s) the file is streamed (never copied to disk, no block cache: the reader only goes
forward). A transient error (connection refused or lost, timeout, HTTP 429 or 5xx) is retried
after a backoff that doubles each time, up to ``read_retries`` times in a row without progress; a
connection lost mid-file resumes with a ``Range`` request from the byte already read, so a
retry never repeats the reader's work. Other errors end the read at once: 404/410 as
FileNotFoundError, anything else (or retries exhausted) as OSError with one line of reason.
From s3:// the object is one streaming GET on the store's filesystem (the lake's own mechanism),
its requests retried ``read_retries`` times by the S3 client.
"""

from __future__ import annotations

import http.client
import io
import re
import time
import urllib.error
import urllib.request
from contextlib import AbstractContextManager
from typing import BinaryIO

import fsspec

from infra.config import ExtractConfig, StorageOptions
from infra.lake_storage import filesystem

_USER_AGENT = "pairlake-warc-reader/0.1"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
_SKIP_BLOCK = 1 << 20


class _Retryable(OSError):
    """An answer worth asking again for (HTTP 429, 5xx)."""


# Everything that may pass by itself. http.client.HTTPException covers IncompleteRead and a
# garbled status line; URLError (but not HTTPError, turned into the errors above) covers
# refused connections and name lookups.
_TRANSIENT = (_Retryable, ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError)


def open_warc(uri: str, config: ExtractConfig, storage: StorageOptions | None = None) -> AbstractContextManager[BinaryIO]:
    """A binary file object over ``uri`` for sequential reading, to be used in a ``with``;
    ``storage`` reaches an s3:// uri (endpoint, credentials by variable name)."""
    if uri.startswith(("http://", "https://")):
        return _HttpStream(uri, config)
    if uri.startswith("s3://"):
        fs, path = filesystem(uri, storage or StorageOptions(), retries=config.read_retries)
        return fs.open_input_stream(path, compression=None, buffer_size=1 << 20)  # type: ignore[return-value]
    return fsspec.open(uri, "rb")


class _HttpStream(io.RawIOBase):
    """A streaming GET that reconnects where it stopped (see the module docstring)."""

    def __init__(self, url: str, config: ExtractConfig) -> None:
        super().__init__()
        self.url = url
        self.config = config
        self.pos = 0  # bytes handed to the reader
        self.size: int | None = None  # the file's size, once a response said it
        self.response: http.client.HTTPResponse | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        failures = 0
        while True:
            if not len(buffer) or (self.size is not None and self.pos >= self.size):
                return 0
            try:
                if self.response is None:
                    self.response = self._connect()
                n = self.response.readinto(buffer)
                # http.client reports a connection closed before Content-Length as a plain end.
                if not n and self.size is not None:
                    raise http.client.IncompleteRead(b"", self.size - self.pos)
                self.pos += n
                return n
            except _TRANSIENT as exc:
                self._disconnect()
                if failures >= self.config.read_retries:
                    raise OSError(f"gave up after {failures + 1} attempts at byte {self.pos}: {_reason(exc)}") from None
                time.sleep(self.config.read_backoff_s * 2**failures)
                failures += 1

    def close(self) -> None:
        self._disconnect()
        super().close()

    def _disconnect(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    def _connect(self) -> http.client.HTTPResponse:
        headers = {"User-Agent": _USER_AGENT}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.config.read_timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
            if exc.code in (404, 410):
                raise FileNotFoundError(f"HTTP {exc.code} {exc.reason}") from None
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
        try:
            self._check_resumed(response)
        except BaseException:
            response.close()
            raise
        return response

    def _check_resumed(self, response: http.client.HTTPResponse) -> None:
        """Learn the file's size and make ``response`` continue at ``self.pos``."""
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match[1]) != self.pos:
                raise OSError(f"asked for bytes from {self.pos}, got Content-Range {response.headers.get('Content-Range')!r}")
            size = None if match[2] == "*" else int(match[2])
        else:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdecimal() else None
            # A server that ignores Range sends the whole file again: skip what was read.
            left = self.pos
            while left:
                skipped = len(response.read(min(left, _SKIP_BLOCK)))
                if not skipped:
                    raise http.client.IncompleteRead(b"", left)
                left -= skipped
        if self.size is not None and size is not None and size != self.size:
            raise OSError(f"the file changed while being read: {self.size} bytes, now {size}")
        self.size = self.size if size is None else size


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed {exc.expected} bytes before the end"
    return str(exc) or type(exc).__name__
