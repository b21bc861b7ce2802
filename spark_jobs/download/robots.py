"""robots.txt: fetched once per origin, parsed with ``urllib.robotparser``, cached for the batch.

Status handling follows RFC 9309: 2xx → parse; 4xx (or redirects that end elsewhere) → no rules,
allow all; 5xx → ``RobotsUnavailable``, so the origin's images fail retryably instead of being
fetched without knowing the rules. A fetch that raises (timeout, refused address, ...) raises the
same exception to every URL of the origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: crawlers must parse at least 500 KiB

# Fetches a robots.txt URL → (HTTP status, body); raises when no HTTP answer came.
RobotsFetch = Callable[[str], Awaitable[tuple[int, bytes]]]


class RobotsUnavailable(Exception):
    """robots.txt answered 5xx: the rules are unknown for now."""


class RobotsCache:
    def __init__(self, fetch: RobotsFetch, user_agent: str):
        self._fetch = fetch
        self._user_agent = user_agent
        # One task per origin: concurrent first requests to a host share a single robots.txt fetch.
        self._parsers: dict[str, asyncio.Task[RobotFileParser]] = {}

    async def allowed(self, url: str) -> bool:
        """Whether our user agent may fetch ``url``."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        task = self._parsers.get(origin)
        if task is None:
            task = self._parsers[origin] = asyncio.ensure_future(self._load(origin))
        parser = await asyncio.shield(task)  # a cancelled waiter must not cancel the shared fetch
        return parser.can_fetch(self._user_agent, url)

    async def _load(self, origin: str) -> RobotFileParser:
        status, body = await self._fetch(f"{origin}/robots.txt")
        if status >= 500:
            raise RobotsUnavailable(f"robots.txt answered HTTP {status}")
        parser = RobotFileParser()
        if 200 <= status < 300:
            parser.parse(body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace").splitlines())
        else:
            parser.allow_all = True
        return parser
