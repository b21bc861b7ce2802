"""Per-host state of a batch: the concurrency slot and the circuit breaker, keyed by (scheme, host, port).

A host is what one server process answers for, so ``http://a:80`` and ``http://a:8080`` are two
hosts: a slowloris on one port neither takes the other's slots nor trips its breaker.

The breaker stops a host that has stopped answering from costing ``timeout_s`` per URL. A timeout
counts against the host only while no request that started after it has been answered (any HTTP
answer, even a 404): a later-started request answering shows the host is up and that URL was merely
slow. Timeouts are counted per distinct URL, so one slow URL's retries are not a dead host. When
``limit`` distinct URLs have timed out in a row the breaker opens for the rest of the batch and the
host's remaining URLs fail fast (retryably: a later batch tries the host again).
"""

from __future__ import annotations

import asyncio

from yarl import URL

HostKey = tuple[str, str, int]


def host_key(url: URL) -> HostKey:
    """(scheme, host, port) of an absolute http(s) URL, the port made explicit."""
    assert url.host is not None and url.port is not None
    return url.scheme.lower(), url.host.lower().rstrip("."), url.port


class HostBreaker:
    def __init__(self, limit: int):
        self._limit = limit  # 0: never opens
        self._started = 0
        self._answered = -1  # the latest-started request that was answered
        self._timed_out: dict[str, int] = {}  # URL → start number, of timeouts after ``_answered``
        self.open = False

    def started(self) -> int:
        """Number a request as it starts (start order is what "consecutive" is about)."""
        self._started += 1
        return self._started

    def answered(self, request: int) -> None:
        if request > self._answered:
            self._answered = request
            self._timed_out = {url: n for url, n in self._timed_out.items() if n > request}

    def timed_out(self, request: int, url: str) -> None:
        if request > self._answered:
            self._timed_out[url] = request
            if self._limit and len(self._timed_out) >= self._limit:
                self.open = True

    def describe(self) -> str:
        return f"{self._limit} URLs timed out in a row with no answer since: the host's remaining URLs are skipped"


class Host:
    """What the fetcher keeps per host: its concurrency slot and its breaker."""

    def __init__(self, concurrency: int, breaker_timeouts: int):
        self.slot = asyncio.Semaphore(concurrency)
        self.breaker = HostBreaker(breaker_timeouts)
