"""Find the (image URL, alt text) candidates of one HTML page with selectolax's Lexbor parser."""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

_HTTP_SCHEMES = ("http", "https")
_IMG_TAG = re.compile(rb"<im(?:g|age)", re.IGNORECASE)  # the parser reads <image> as <img>


def normalize_caption(alt: str) -> str:
    """Alt text as shown: entities decoded, whitespace (NBSP included) collapsed and stripped."""
    if "&" in alt:
        # The parser already decoded entities once; what is left is double-escaped markup
        # (``&amp;eacute;``), common in CMS output and never meant to be shown literally.
        alt = html.unescape(alt)
    return " ".join(alt.split())


def resolve_url(base: str, src: str) -> str | None:
    """``src`` made absolute against ``base``, without fragment; None unless it is http(s) with a host."""
    try:
        url = urljoin(base, src.strip()).partition("#")[0]
        parts = urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host
        return None
    if parts.scheme not in _HTTP_SCHEMES or not parts.hostname:
        return None
    return url


class _PageResolver:
    """resolve_url against one base, with string-concatenation fast paths for the common shapes
    of ``src``: urljoin costs ~10 µs, several times the rest of the per-image work."""

    def __init__(self, base: str) -> None:
        self.base = base
        match = _HTTP_BASE.match(base)
        # A base with dot segments gets them removed by urljoin after merging: no fast path.
        self.fast = match is not None and "/." not in match["path"] and not _ODD_CHARS.search(base)
        if self.fast:
            self.scheme = match["scheme"].lower()
            self.origin = f"{self.scheme}://{match['netloc']}"
            self.directory = self.origin + (match["path"][: match["path"].rfind("/") + 1] or "/")

    def __call__(self, src: str) -> str | None:
        src = src.strip()
        # Left to urljoin: dot segments, query- or fragment-only references, odd characters.
        if not self.fast or not src or src[0] in ".?#" or "/." in src or _ODD_CHARS.search(src):
            return resolve_url(self.base, src)
        if src.startswith(("http://", "https://")):
            url = src
        elif src.startswith("//"):
            url = f"{self.scheme}:{src}"
        elif src.startswith("/"):
            return self.origin + src.partition("#")[0]
        elif _SCHEME_LIKE.match(src):
            return resolve_url(self.base, src)  # data:, javascript:, mailto:, ...
        else:
            return self.directory + src.partition("#")[0]
        url = url.partition("#")[0]
        # Absolute: only the host needs checking.
        host_start = url.index("//") + 2
        return url if len(url) > host_start and url[host_start] not in "/?#:@" else resolve_url(self.base, url)


_HTTP_BASE = re.compile(r"(?P<scheme>https?)://(?P<netloc>[^/?#]+)(?P<path>[^?#]*)", re.IGNORECASE)
# Characters that URL parsers rewrite (backslash) or strip (tab, newline), and IPv6 hosts.
_ODD_CHARS = re.compile(r"[\[\\\t\r\n]")
_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def page_images(
    page: bytes, page_url: str, min_chars: int, max_chars: int, counts: dict[str, int]
) -> list[tuple[str, str]]:
    """(absolute URL, caption) of every ``<img>`` with a usable alt and src, in document order.

    ``page`` is UTF-8. Every image is counted once in ``counts``: images_seen, plus the reason it
    was dropped (no_alt, empty_alt, no_src, non_http_url, caption_too_short, caption_too_long).
    """
    if not _IMG_TAG.search(page):
        return []  # no parse needed
    tree = LexborHTMLParser(page)
    base = page_url
    for node in tree.tags("base"):
        href = node.attributes.get("href")
        if href is not None:
            # The first <base href> counts; it may itself be relative, and a non-http(s) one is
            # ignored as a browser would.
            base = resolve_url(page_url, href) or page_url
            break
    resolve = _PageResolver(base)
    found: list[tuple[str, str]] = []
    images = tree.tags("img")
    counts["images_seen"] += len(images)
    for node in images:
        attrs = node.attributes
        alt = attrs.get("alt")
        if alt is None:
            counts["no_alt"] += 1
            continue
        caption = normalize_caption(alt)
        if not caption:
            counts["empty_alt"] += 1
            continue
        src = attrs.get("src")
        if not src or not src.strip():
            counts["no_src"] += 1
            continue
        url = resolve(src)
        if url is None:
            counts["non_http_url"] += 1
            continue
        if len(caption) < min_chars:
            counts["caption_too_short"] += 1
        elif len(caption) > max_chars:
            counts["caption_too_long"] += 1
        else:
            found.append((url, caption))
    return found
