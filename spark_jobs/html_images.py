"""Find the (image URL, alt text) candidates of one HTML page with selectolax's Lexbor parser, the
page's own opt-out signals, and refuse pages that would cost the parser super-linear time."""

from __future__ import annotations

import html
import re
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

from infra.config import ExtractConfig
from spark_jobs.html_nesting import over_parse_budget

_HTTP_SCHEMES = ("http", "https")
_IMG_TAG = re.compile(rb"<im(?:g|age)", re.IGNORECASE)  # the parser reads <image> as <img>

# Values of the candidates' ``optout_signal`` column (the images stage records them as
# ``opted_out:<signal>`` without a request).
META_ROBOTS = "meta-robots"
TDM_META = "tdm-meta"
# Robots directives that opt images out of datasets (img2dataset's set, plus "none"), in
# <meta name="robots"> here and in X-Robots-Tag at download time (spark_jobs/download/fetcher.py).
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
_DIRECTIVE_SPLIT = re.compile(r"[\s,]+")


class PageTooComplex(Exception):
    """The page is over the parse budget (extract.max_page_elements / extract.max_nesting_depth)."""


class PageImages(NamedTuple):
    pairs: list[tuple[str, str]]  # (absolute URL, caption) in document order
    optout: str | None  # META_ROBOTS or TDM_META when the page opts its images out, else None


def normalize_caption(alt: str) -> str:
    """Alt text as shown: entities decoded, whitespace (NBSP included) collapsed and stripped."""
    if "&" in alt:
        # The parser already decoded entities once; what is left is double-escaped markup
        # (``&amp;eacute;``), common in CMS output and never meant to be shown literally.
        alt = html.unescape(alt)
    return " ".join(alt.split())


def resolve_url(base: str, src: str) -> str | None:
    """``src`` made absolute against ``base``, without fragment; None unless it is http(s) with a host."""
    src = src.strip()
    try:
        if src and src[0] not in "/?#" and not _SCHEME_LIKE.match(src):
            # A relative path is merged with the base's directory here (RFC 3986 5.2.3): urljoin's
            # own merge drops empty segments ("a//b.jpg" -> "a/b.jpg"), which a browser keeps.
            base_path = urlsplit(base).path
            src = (base_path[: base_path.rfind("/") + 1] or "/") + src
        url = urljoin(base, src).partition("#")[0]
        parts = urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host
        return None
    if parts.scheme not in _HTTP_SCHEMES or not parts.hostname:
        return None
    # urljoin keeps "HTTPS://" as written when the base's scheme differs: one image, one URL (and uid).
    return url if url.startswith(parts.scheme) else parts.scheme + url[len(parts.scheme):]


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
        elif scheme := _SCHEME_LIKE.match(src):
            # data:, javascript:, mailto:, ... are never an image's URL (lazy pages put data: in
            # thousands of src); "http:x" is relative to the base: urljoin's.
            return resolve_url(self.base, src) if scheme[0][:-1].lower() in _HTTP_SCHEMES else None
        else:
            return self.directory + src.partition("#")[0]
        url = url.partition("#")[0]
        # Absolute: only the host needs checking.
        host_start = url.index("//") + 2
        return url if len(url) > host_start and url[host_start] not in "/?#:@" else resolve_url(self.base, url)


# Where lazy-loading scripts (lazysizes, WordPress plugins, jQuery lazyload) keep the real image.
_LAZY_SRC = ("data-src", "data-lazy-src", "data-original")
_HTTP_BASE = re.compile(r"(?P<scheme>https?)://(?P<netloc>[^/?#]+)(?P<path>[^?#]*)", re.IGNORECASE)
# Characters that URL parsers rewrite (backslash) or strip (tab, newline), and IPv6 hosts.
_ODD_CHARS = re.compile(r"[\[\\\t\r\n]")
_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def page_images(page: bytes, page_url: str, config: ExtractConfig, counts: dict[str, int]) -> PageImages:
    """The usable ``<img>`` of a UTF-8 ``page`` and its opt-out signal.

    Every image is counted once in ``counts``: images_seen, plus the reason it was dropped (no_alt,
    empty_alt, no_src, non_http_url, caption_too_short, caption_too_long). Raises PageTooComplex,
    before parsing, for a page over the parse budget.
    """
    if not _IMG_TAG.search(page):
        return PageImages([], None)  # no parse needed
    problem = over_parse_budget(page, config.max_page_elements, config.max_nesting_depth)
    if problem:
        raise PageTooComplex(problem)
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
        if not src or not src.strip() or src.lstrip()[:5].lower() == "data:":
            # A lazy-loading page puts a placeholder (or nothing) in src and the image in an
            # attribute that its script copies into src: that attribute is the image shown.
            lazy = next((v for v in map(attrs.get, _LAZY_SRC) if v and v.strip()), None)
            src = lazy or src
        if not src or not src.strip():
            counts["no_src"] += 1
            continue
        url = resolve(src)
        if url is None:
            counts["non_http_url"] += 1
            continue
        if len(caption) < config.min_caption_chars:
            counts["caption_too_short"] += 1
        elif len(caption) > config.max_caption_chars:
            counts["caption_too_long"] += 1
        else:
            found.append((url, caption))
    return PageImages(found, _optout_signal(tree, config) if found else None)


def _optout_signal(tree: LexborHTMLParser, config: ExtractConfig) -> str | None:
    """The page's own opt-out: ``<meta name="robots">`` with an AI or index directive, else TDMRep's
    ``<meta name="tdm-reservation" content="1">`` (the TDMRep header's rule: exactly "1")."""
    robots = tdm = False
    for node in tree.tags("meta"):
        attrs = node.attributes
        name = (attrs.get("name") or "").strip().lower()
        content = (attrs.get("content") or "").strip().lower()
        if name == "robots" and config.honour_meta_robots:
            robots = robots or not OPT_OUT_DIRECTIVES.isdisjoint(_DIRECTIVE_SPLIT.split(content))
        elif name == "tdm-reservation" and config.honour_tdm_meta:
            tdm = tdm or content == "1"
    return META_ROBOTS if robots else TDM_META if tdm else None
