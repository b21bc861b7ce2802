"""Async fetching of image URLs with aiohttp: deadlines, retries, limits, caps and opt-outs.

One ``Fetcher`` (one ``ClientSession``) serves a batch. Per URL: each hop is checked (scheme,
address guard, the host's breaker, the origin's policy files: robots.txt, tdmrep.json, ai.txt)
before any connection, runs under a per-host and then a global slot (host first, so URLs waiting
for a busy host do not hold global slots that other hosts could use) and under a ``timeout_s``
deadline. Hosts are (scheme, host, port) (see ``hosts``). Redirects are followed by hand, so every
hop gets those checks. The final response is judged on its headers (status, X-Robots-Tag,
tdm-reservation, Content-Length) before the body is read; the body read stops past
``max_body_bytes``. Retryable failures are retried with exponential backoff, except a host whose
breaker has opened. Failures come back as reason codes, never as exceptions.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import aiohttp
from yarl import URL

from infra.config import DownloadConfig
from spark_jobs.download.address_guard import AddressGuard, AddressRefused, GuardedResolver
from spark_jobs.download.hosts import Host, HostKey, host_key
from spark_jobs.download.origin_policies import MAX_POLICY_BYTES, OriginPolicies, PolicyAnswers, PolicyUnavailable
from spark_jobs.download.tdmrep import header_reserves
from spark_jobs.html_images import OPT_OUT_DIRECTIVES  # the same in X-Robots-Tag and <meta name="robots">

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Directives that carry a value after ":", so "name:" does not start a user-agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
HOST_UNRESPONSIVE = "host_unresponsive"
_RETRYABLE = frozenset({"timeout", "connection_error", HOST_UNRESPONSIVE})
_READ_CHUNK = 64 * 1024


def is_retryable(reason: str) -> bool:
    """Whether a failure may succeed later: timeouts, dropped connections, an unresponsive host,
    an unreadable policy file (``<file>_unavailable``), 408, 429 and 5xx."""
    if reason.startswith("http_") and reason[5:].isdigit():
        code = int(reason[5:])
        return code in (408, 429) or code >= 500
    return reason in _RETRYABLE or reason.endswith("_unavailable")


class FetchError(Exception):
    def __init__(
        self, reason: str, detail: str, *, url: str, http_status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.url = url  # the hop that failed
        self.http_status = http_status
        self.retry_after = retry_after


@dataclass
class FetchResult:
    url: str
    body: bytes | None = None  # set on success
    error: str | None = None  # reason code on failure
    detail: str | None = None
    retryable: bool = False
    http_status: int | None = None
    attempts: int = 0
    final_url: str | None = None


def x_robots_tag_opts_out(header_values: list[str], user_agent: str) -> bool:
    """Whether X-Robots-Tag values opt out of AI use for ``user_agent`` ("otherbot: noai" does not)."""
    token = user_agent.split("/")[0].strip().lower()
    for value in header_values:
        scope = None
        for item in value.split(","):
            name, colon, rest = item.partition(":")
            name = name.strip().lower()
            if colon and name not in _VALUED_DIRECTIVES:
                scope, directive = name, rest.strip().lower()
            else:
                directive = item.strip().lower()
            if directive in OPT_OUT_DIRECTIVES and scope in (None, token):
                return True
    return False


def _classify(exc: BaseException, url: str, timeout_s: float) -> FetchError:
    """Map an aiohttp/asyncio exception to a reason code."""
    detail = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, TimeoutError):
        return FetchError("timeout", f"no complete answer within {timeout_s}s", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, AddressRefused):
        return FetchError("address_refused", str(exc.os_error), url=url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FetchError("dns_error", detail, url=url)
    if isinstance(exc, aiohttp.ClientSSLError):
        return FetchError("ssl_error", detail, url=url)
    if isinstance(exc, (aiohttp.InvalidURL, ValueError)):
        return FetchError("bad_url", detail, url=url)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)):
        return FetchError("connection_error", detail, url=url)
    if isinstance(exc, aiohttp.ClientResponseError):
        return FetchError("bad_response", detail, url=url)
    return FetchError("fetch_error", detail, url=url)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # the HTTP-date form is rare for 429/503; backoff covers it


class Fetcher:
    """Fetches URLs for one batch; use as ``async with Fetcher(config) as f: await f.fetch(url)``.
    ``policy_answers`` carries the origins' policy files over from earlier batches."""

    def __init__(self, config: DownloadConfig, policy_answers: PolicyAnswers | None = None):
        self._config = config
        self._guard = AddressGuard(config.allow_hosts)
        self._global = asyncio.Semaphore(config.concurrency)
        self._hosts: dict[HostKey, Host] = {}
        self._policies = OriginPolicies(config, self._fetch_policy_file, policy_answers)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=self._config.concurrency, limit_per_host=0, resolver=GuardedResolver(self._guard), ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self._config.user_agent, "Accept": "image/*,*/*;q=0.8"},
            timeout=aiohttp.ClientTimeout(total=None),  # deadlines are per hop, see _hop
            trust_env=False,  # an environment proxy would connect on our behalf, past the address guard
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> FetchResult:
        """GET an image URL, retrying retryable failures; never raises for a bad URL or host."""
        cfg = self._config
        attempt = 0
        while True:
            attempt += 1
            try:
                status, body, final_url = await self._get(url, max_bytes=cfg.max_body_bytes, policy_file=False)
                return FetchResult(url, body=body, http_status=status, attempts=attempt, final_url=final_url)
            except FetchError as exc:
                retryable = is_retryable(exc.reason)
                if not retryable or attempt > cfg.retries or exc.reason == HOST_UNRESPONSIVE:
                    return FetchResult(
                        url,
                        error=exc.reason,
                        detail=exc.detail,
                        retryable=retryable,
                        http_status=exc.http_status,
                        attempts=attempt,
                        final_url=exc.url,
                    )
                # Jittered so that a batch of failures from one host does not come back in lockstep.
                delay = cfg.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                await asyncio.sleep(max(delay, min(exc.retry_after or 0.0, cfg.timeout_s)))

    async def _get(self, url: str, *, max_bytes: int, policy_file: bool) -> tuple[int, bytes, str]:
        """GET following up to MAX_REDIRECTS redirects → (status, body, final URL)."""
        for _ in range(MAX_REDIRECTS + 1):
            status, body, location = await self._hop(url, max_bytes=max_bytes, policy_file=policy_file)
            if location is None:
                return status, body, url
            url = location
        raise FetchError("too_many_redirects", f"more than {MAX_REDIRECTS} redirects", url=url)

    async def _hop(self, url: str, *, max_bytes: int, policy_file: bool) -> tuple[int, bytes, str | None]:
        """One request → (status, body, redirect location or None). ``policy_file``: fetching robots.txt
        or the like, so no policy or header checks and an oversized body is truncated."""
        assert self._session is not None, "use Fetcher as an async context manager"
        host = self._check_url(url)
        if not policy_file:
            await self._check_policies(url)
        try:
            async with host.slot, self._global:
                self._check_breaker(host, url)  # again: waiting for the slot may have outlasted the host
                request = host.breaker.started()
                try:
                    async with asyncio.timeout(self._config.timeout_s):
                        answer = await self._request(url, max_bytes, policy_file)
                except TimeoutError:
                    host.breaker.timed_out(request, url)
                    raise
                except FetchError:  # an answer we refuse (HTTP error, opt-out, too large) is still an answer
                    host.breaker.answered(request)
                    raise
                host.breaker.answered(request)
                return answer
        except FetchError:
            raise
        except Exception as exc:  # every other failure of the hop becomes a reason code
            raise _classify(exc, url, self._config.timeout_s) from exc

    async def _request(self, url: str, max_bytes: int, policy_file: bool) -> tuple[int, bytes, str | None]:
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as resp:
            if resp.status in REDIRECT_STATUSES and "Location" in resp.headers:
                return resp.status, b"", str(resp.url.join(URL(resp.headers["Location"])))
            if not 200 <= resp.status < 300:
                raise FetchError(
                    f"http_{resp.status}",
                    f"HTTP {resp.status} {resp.reason or ''}".strip(),
                    url=url,
                    http_status=resp.status,
                    retry_after=_retry_after(resp.headers.get("Retry-After")),
                )
            if not policy_file:
                self._check_headers(resp, url, max_bytes)
            return resp.status, await self._read_body(resp, url, max_bytes, truncate=policy_file), None

    def _check_url(self, url: str) -> Host:
        """The URL's host, after refusing bad URLs, IP literals the guard rejects and hosts whose
        breaker has opened (no connection made)."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise FetchError("bad_url", str(exc)[:300], url=url) from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise FetchError("bad_url", f"not an absolute http(s) URL: {url[:200]}", url=url)
        try:
            self._guard.check_literal(parsed.host, parsed.port or 0)
        except AddressRefused as exc:
            raise FetchError("address_refused", str(exc), url=url) from None
        key = host_key(parsed)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = Host(self._config.per_host_concurrency, self._config.host_breaker_timeouts)
        self._check_breaker(host, url)
        return host

    @staticmethod
    def _check_breaker(host: Host, url: str) -> None:
        if host.breaker.open:
            raise FetchError(HOST_UNRESPONSIVE, host.breaker.describe(), url=url)

    async def _check_policies(self, url: str) -> None:
        try:
            refusal = await self._policies.check(url)
        except PolicyUnavailable as exc:
            # The origin's shared failure, re-raised per URL: transient ones keep the URL retryable as
            # ``<file>_unavailable``; host-level ones (refused address, DNS, TLS, an open breaker) are
            # the URL's own outcome too.
            cause = exc.__cause__
            transient = not isinstance(cause, FetchError) or (
                is_retryable(cause.reason) and cause.reason != HOST_UNRESPONSIVE
            )
            reason = f"{exc.key}_unavailable" if transient else cause.reason
            raise FetchError(reason, exc.detail[:300], url=url) from None
        if refusal is not None:
            raise FetchError(refusal.reason, refusal.detail, url=url)

    async def _fetch_policy_file(self, url: str) -> tuple[int, bytes]:
        try:
            status, body, _ = await self._get(url, max_bytes=MAX_POLICY_BYTES, policy_file=True)
        except FetchError as exc:
            if exc.http_status is not None:
                return exc.http_status, b""
            if exc.reason == "too_many_redirects":
                return 404, b""  # RFC 9309: past 5 redirects robots.txt counts as unavailable (4xx)
            raise
        return status, body

    def _check_headers(self, resp: aiohttp.ClientResponse, url: str, max_bytes: int) -> None:
        """Decide from the headers alone, so opted-out or oversized bodies are never downloaded."""
        tags = resp.headers.getall("X-Robots-Tag", [])
        if self._config.honour_x_robots_tag and x_robots_tag_opts_out(tags, self._config.user_agent):
            detail = f"X-Robots-Tag: {', '.join(tags)}"[:300]
            raise FetchError("opted_out:x-robots-tag", detail, url=url, http_status=resp.status)
        tdm = resp.headers.getall("tdm-reservation", [])
        if self._config.honour_tdm_header and header_reserves(tdm):
            detail = f"tdm-reservation: {', '.join(tdm)}"[:300]
            raise FetchError("opted_out:tdm-header", detail, url=url, http_status=resp.status)
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise FetchError(
                "too_large", f"Content-Length {resp.content_length} > {max_bytes}", url=url, http_status=resp.status
            )

    @staticmethod
    async def _read_body(resp: aiohttp.ClientResponse, url: str, max_bytes: int, *, truncate: bool) -> bytes:
        # Counted after Content-Encoding is undone, so a gzip bomb hits the same cap.
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > max_bytes:
                if truncate:
                    return bytes(body[:max_bytes])
                raise FetchError("too_large", f"body exceeds {max_bytes} bytes", url=url, http_status=resp.status)
        return bytes(body)
