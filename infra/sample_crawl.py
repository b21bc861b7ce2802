"""A small, deterministic stand-in for a Common Crawl segment, with the trouble real crawls carry.

``generate_sample_crawl`` writes

- ``warcs/*.warc.gz``: real WARC files (warcio, one gzip member per record; warcinfo, then
  request/response/metadata records per page, as Common Crawl does) of HTML pages whose ``<img>``
  tags point at the image server on ``base_url``;
- ``site/``: what that server serves (``infra.image_server.save_site``): the images, robots.txt and
  the misbehaving resources;
- ``blocklists/``: hash lists in Re-LAION's style naming some of the crawl's images, by the MD5
  of their bytes (plain text) and by the SHA256 of their URL (CSV);
- ``expected.json``: ground truth per image URL, so tests can check every stage of the funnel.

    python -m infra.sample_crawl --out build/sample_crawl --base-url http://127.0.0.1:18765 --pages 60
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from gpu_jobs import synthetic_shapes as shapes
from infra.image_server import Resource, save_site

# Every kind expected.json uses. Kinds name what is special about an image reference; the plain
# ones are "match" (caption describes the image) and "mismatch" (it does not).
KINDS: tuple[str, ...] = (
    "match",
    "mismatch",
    "duplicate",
    "non_english",
    "relative",
    "protocol_relative",
    "base_href",
    "http_404",
    "timeout",
    "slow",
    "not_image",
    "truncated",
    "huge",
    "noai",
    "robots_disallowed",
    # Every machine-readable opt-out signal (issue D): in the page, in a header, in an origin file.
    "meta_robots",
    "tdm_meta",
    "tdm_header",
    "tdmrep_json",
    "ai_txt",
    "robots_ai",
    "redirect",
    "data_url",
    "no_alt",
    "non_utf8_page",
    "photo",
    "malformed_record",
    # Curation (issue B): tags, dedup and hash lists.
    "watermark",
    "hazard",
    "degraded",
    "exact_duplicate",
    "near_duplicate",
    "blocklisted_image",
    "blocklisted_url",
)

# Where each kind leaves the funnel under the demo config (3 s timeout, robots and noai honoured).
_DOWNLOAD = {
    "http_404": "failed",
    "timeout": "failed",
    "not_image": "failed",
    "truncated": "failed",
    "huge": "failed",
    "noai": "skipped",
    "robots_disallowed": "skipped",
    "meta_robots": "skipped",
    "tdm_meta": "skipped",
    "tdm_header": "skipped",
    "tdmrep_json": "skipped",
    "ai_txt": "skipped",
    "robots_ai": "skipped",
    "blocklisted_url": "skipped",
}
_NOT_EXTRACTED = {"data_url", "no_alt", "malformed_record"}

TIMEOUT_DELAY_S = 10.0  # well past the demo's 3 s download timeout
SLOW_DELAY_S = 1.0  # slow, but inside it
HUGE_SIDE = 15_000  # 225 Mpx: over twice PIL's 89 Mpx bomb limit, so even plain PIL refuses it
DISALLOWED_PREFIX = "/private/"
# Paths the origin's opt-out files reserve: TDMRep's tdmrep.json, Spawning's ai.txt, and a robots.txt
# group for an AI-training crawler (pairlake honours those groups as if it were that crawler).
TDMREP_PREFIX = "/tdm-reserved/"
AI_TXT_PREFIX = "/ai-reserved/"
AI_CRAWLER_PREFIX = "/ccbot-reserved/"
MIN_PAGES = 8
IMAGES_PER_PAGE = 4
FAKE_HOSTS = ("shop.example", "blog.example", "news.example", "forum.example", "recipes.example")
_SERVED_FORMATS = ("jpeg", "jpeg", "jpeg", "png", "webp")
_CRAWL_START = datetime(2024, 2, 20, 12, 0, 0, tzinfo=timezone.utc)

NON_ENGLISH: tuple[tuple[str, str, str, str], ...] = (
    ("fr", "blue", "star", "une étoile bleue dessinée sur un fond clair"),
    ("de", "red", "circle", "ein roter Kreis auf einem hellen Hintergrund"),
    ("es", "green", "square", "un cuadrado verde sobre un fondo claro"),
    ("ja", "yellow", "triangle", "明るい背景に描かれた黄色い三角形"),
    ("it", "purple", "ring", "un anello viola disegnato su uno sfondo chiaro"),
    ("pt", "orange", "cross", "uma cruz laranja desenhada num fundo claro"),
)
# skimage.data photographs with honest captions: outside the demo model's vocabulary, but real.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "portrait of astronaut Eileen Collins in her flight suit in front of the American flag"),
    ("coffee", "a cup of coffee on a saucer with a spoon"),
    ("chelsea", "Chelsea the tabby cat looking to the side"),
    ("rocket", "a Falcon 9 rocket on the launch pad"),
    ("camera", "black and white photo of a man with a camera on a tripod"),
    ("coins", "ancient Greek coins from Pompeii"),
)
# The page in a non-UTF-8 charset: its caption needs the declared charset to decode right.
NON_UTF8_CHARSET = "windows-1252"
NON_UTF8_CAPTION = "a photo of a green square on the café’s naïve sign"


@dataclass(frozen=True)
class SampleCrawl:
    out_dir: Path
    base_url: str
    warcs: list[Path]
    site_dir: Path
    expected_path: Path
    images: dict[str, dict[str, Any]]  # expected.json's ground truth, keyed by resolved image URL


@dataclass
class _Page:
    url: str
    warc: int
    title: str
    charset: str = "utf-8"
    base_href: str | None = None
    malformed: bool = False  # written as a truncated gzip member
    meta: dict[str, str] = field(default_factory=dict)  # <meta name content> in the head
    imgs: list[tuple[str, str | None]] = field(default_factory=list)  # (src attribute, alt or None)


class _Builder:
    """Accumulates the site's resources and the ground truth while pages are filled."""

    def __init__(self, base_url: str, rng: np.random.Generator) -> None:
        self.base = base_url.rstrip("/")
        self.rng = rng
        self.resources: dict[str, Resource] = {
            "/robots.txt": Resource(
                body=f"User-agent: *\nDisallow: {DISALLOWED_PREFIX}\n\nUser-agent: CCBot\nDisallow: {AI_CRAWLER_PREFIX}\n"
                .encode(), content_type="text/plain"
            ),
            "/.well-known/tdmrep.json": Resource(
                body=json.dumps([{"location": f"{TDMREP_PREFIX}*", "tdm-reservation": 1},
                                 {"location": "/*", "tdm-reservation": 0}]).encode(),
                content_type="application/json",
            ),
            "/ai.txt": Resource(body=f"User-Agent: *\nDisallow: {AI_TXT_PREFIX}\n".encode(), content_type="text/plain"),
        }
        self.images: dict[str, dict[str, Any]] = {}

    def serve(self, resource: Resource, prefix: str = "/img/", ext: str | None = None) -> str:
        """Register ``resource`` at a fresh path under ``prefix``; return the path."""
        ext = ext or {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}[resource.content_type]
        path = f"{prefix}{len(self.resources):05d}.{ext}"
        self.resources[path] = resource
        return path

    def shape_resource(self, colour: str, shape: str, **kwargs: Any) -> tuple[Resource, str]:
        """A rendered shape in a random served format, and the background it was drawn on."""
        bg = shapes.random_background(colour, self.rng)
        body, content_type = served_image(shapes.render(colour, shape, self.rng, background_name=bg), self.rng)
        return Resource(body=body, content_type=content_type, **kwargs), bg

    def random_class(self) -> tuple[str, str]:
        return shapes.CLASSES[int(self.rng.integers(len(shapes.CLASSES)))]

    def add(self, page: _Page, src: str, alt: str | None, kind: str, **truth: Any) -> str:
        """Put ``<img src alt>`` on ``page`` and record its ground truth under the resolved URL."""
        page.imgs.append((src, alt))
        url = src if src.startswith("data:") else urljoin(page.base_href or page.url, src)
        if url not in self.images:
            extracted = kind not in _NOT_EXTRACTED
            self.images[url] = {
                "kind": kind,
                "src": src,
                "caption": alt,
                "pages": [],
                "extracted": extracted,  # should the extractor emit a (url, caption) pair
                "download": _DOWNLOAD.get(kind, "ok") if extracted else None,
                "clip": None,  # "match"/"mismatch" where the demo model's verdict is known
                "language": "en" if alt else None,
                "class": None,  # [colour, shape] of a synthetic image
                **truth,
            }
        self.images[url]["pages"].append(page.url)
        return url

    def shape(self, page: _Page, kind: str, src_of=None, prefix: str = "/img/", **res_kwargs: Any) -> str:
        """A shape with a matching caption; ``src_of`` turns its path into the written src."""
        colour, shape = self.random_class()
        resource, bg = self.shape_resource(colour, shape, **res_kwargs)
        path = self.serve(resource, prefix)
        src = src_of(path) if src_of else self.base + path
        caption = shapes.caption(colour, shape, self.rng, bg)
        return self.add(page, src, caption, kind, clip="match", **{"class": [colour, shape]})

    def mismatch(self, page: _Page) -> str:
        """A shape captioned with the wrong colour, the wrong shape, or both."""
        colour, shape = self.random_class()
        resource, bg = self.shape_resource(colour, shape)
        wrong = ("colour", "shape", "both")[int(self.rng.integers(3))]
        cap_colour = self.other(list(shapes.COLOURS), colour) if wrong != "shape" else colour
        cap_shape = self.other(list(shapes.SHAPES), shape) if wrong != "colour" else shape
        caption = shapes.caption(cap_colour, cap_shape, self.rng, bg)
        return self.add(page, self.base + self.serve(resource), caption, "mismatch", clip="mismatch", wrong=wrong,
                        caption_class=[cap_colour, cap_shape], **{"class": [colour, shape]})

    def overlaid(self, page: _Page, overlay: str) -> str:
        """A matching caption on an image with an overlay that captions never mention."""
        colour, shape = self.random_class()
        bg = shapes.random_background(colour, self.rng)
        image = shapes.OVERLAYS[overlay](shapes.render(colour, shape, self.rng, background_name=bg), self.rng)
        body, content_type = served_image(image, self.rng)
        path = self.serve(Resource(body=body, content_type=content_type))
        caption = shapes.caption(colour, shape, self.rng, bg)
        return self.add(page, self.base + path, caption, overlay, clip="match", **{"class": [colour, shape]})

    def other(self, options: list[str], exclude: str) -> str:
        rest = [o for o in options if o != exclude]
        return rest[int(self.rng.integers(len(rest)))]


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt.upper(), **({} if fmt == "png" else {"quality": 88}))
    return buf.getvalue()


def served_image(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """(body, content type) of a shape image as the sample site serves it: mostly JPEG, some
    PNG and WebP. The demo model trains on the same bodies, so it sees what the crawl serves."""
    fmt = _SERVED_FORMATS[int(rng.integers(len(_SERVED_FORMATS)))]
    return _encode(image, fmt), f"image/{fmt}"


def _bomb_png(side: int) -> bytes:
    """A valid ``side``×``side`` 1-bit PNG of zeros: a few kB that decode to hundreds of Mpx."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _photo(name: str) -> Image.Image:
    import skimage.data  # imported late: slow to import, and only the photos need it

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _plan_pages(pages: int, warc_files: int, rng: np.random.Generator) -> list[_Page]:
    out = []
    for i in range(pages):
        host = FAKE_HOSTS[int(rng.integers(len(FAKE_HOSTS)))]
        topic = ("gallery", "products", "articles", "threads", "posts")[int(rng.integers(5))]
        out.append(_Page(f"http://{host}/{topic}/page-{i:03d}.html", warc=i % warc_files, title=f"{topic.title()} {i}"))
    return out


def _spread(pages: list[_Page], n: int) -> list[_Page]:
    """``n`` of ``pages``, in as many different WARC files as there are."""
    one_per_file: dict[int, _Page] = {}
    for page in pages:
        one_per_file.setdefault(page.warc, page)
    chosen = list(one_per_file.values())[:n]
    return chosen + [p for p in pages if p not in chosen][: n - len(chosen)]


def _fill_pages(b: _Builder, pages: list[_Page]) -> None:
    """Place every kind of trouble on the pages, then the bulk of plain matches and mismatches."""
    rng = b.rng
    # The malformed record is the last one of the second file, so readers lose nothing after it.
    malformed = [p for p in pages if p.warc == min(1, pages[-1].warc)][-1]
    malformed.malformed = True
    rest = [p for p in pages if p is not malformed]
    order = [rest[int(i)] for i in rng.permutation(len(rest))]  # the seed moves the special pages
    deep, shallow, based, non_utf8, meta_robots, tdm_meta = order[:6]
    normal = order[6:]

    def pick() -> _Page:
        return normal[int(rng.integers(len(normal)))]

    # Pages on the image server itself, so that relative URLs resolve to it.
    deep.url = f"{b.base}/blog/2024/{urlsplit(deep.url).path.rsplit('/', 1)[1]}"
    shallow.url = f"{b.base}/{urlsplit(shallow.url).path.rsplit('/', 1)[1]}"
    b.shape(deep, "relative", lambda path: "../.." + path)  # ../../img/x.jpg from /blog/2024/
    b.shape(shallow, "relative", lambda path: path.lstrip("/"))  # img/x.jpg from /
    b.shape(pick(), "protocol_relative", lambda path: f"//{urlsplit(b.base).netloc}{path}")
    based.base_href = f"{b.base}/static/"
    b.shape(based, "base_href", lambda path: path.rsplit("/", 1)[1], prefix="/static/")

    b.shape(pick(), "slow", delay_s=SLOW_DELAY_S)
    b.shape(pick(), "slow", delay_s=SLOW_DELAY_S)
    b.shape(pick(), "timeout", delay_s=TIMEOUT_DELAY_S)
    b.shape(pick(), "noai", headers={"X-Robots-Tag": "noai, noimageai"})
    b.shape(pick(), "robots_disallowed", prefix=DISALLOWED_PREFIX)
    # The page's own opt-outs cover its every image: these two pages hold one image each.
    meta_robots.meta["robots"] = "index, follow, noai, noimageai"
    b.shape(meta_robots, "meta_robots")
    tdm_meta.meta["tdm-reservation"] = "1"
    b.shape(tdm_meta, "tdm_meta")
    b.shape(pick(), "tdm_header", headers={"tdm-reservation": "1"})
    b.shape(pick(), "tdmrep_json", prefix=TDMREP_PREFIX)
    b.shape(pick(), "ai_txt", prefix=AI_TXT_PREFIX)
    b.shape(pick(), "robots_ai", prefix=AI_CRAWLER_PREFIX)
    b.shape(malformed, "malformed_record")

    # A 302 to a plain image that no page references directly.
    colour, shape = b.random_class()
    resource, bg = b.shape_resource(colour, shape)
    target = b.serve(resource)
    redirect = b.serve(Resource(status=302, redirect_to=target, content_type="text/html"), "/r/", "jpg")
    b.add(pick(), b.base + redirect, shapes.caption(colour, shape, rng, bg), "redirect", clip="match",
          final_url=b.base + target, **{"class": [colour, shape]})

    first, *again = _spread(normal, 3)
    dup = b.images[b.shape(first, "duplicate")]
    for page in again:
        b.add(page, dup["src"], dup["caption"], "duplicate")

    for lang, colour, shape, text in NON_ENGLISH:
        path = b.serve(Resource(body=_encode(shapes.render(colour, shape, rng), "jpeg")))
        b.add(pick(), b.base + path, text, "non_english", language=lang, **{"class": [colour, shape]})

    non_utf8.charset = NON_UTF8_CHARSET
    path = b.serve(b.shape_resource("green", "square")[0])
    b.add(non_utf8, b.base + path, NON_UTF8_CAPTION, "non_utf8_page", **{"class": ["green", "square"]})

    for name, text in PHOTOS:
        path = b.serve(Resource(body=_encode(_photo(name), "jpeg")), "/photos/")
        b.add(pick(), b.base + path, text, "photo", photo=name)

    # Broken resources behind plausible captions.
    jpeg = _encode(shapes.render("red", "circle", rng), "jpeg")
    broken = {
        "http_404": Resource(body=b"<h1>404 Not Found</h1>", content_type="text/html", status=404),
        "not_image": Resource(body=b"<!DOCTYPE html><html><body>Image unavailable</body></html>"),
        "truncated": Resource(body=jpeg[: len(jpeg) * 3 // 5]),
        "huge": Resource(body=_bomb_png(HUGE_SIDE), content_type="image/png"),
    }
    for kind, resource in broken.items():
        b.add(pick(), b.base + b.serve(resource, ext="png" if kind == "huge" else "jpg"), "a red circle", kind)

    # Dropped at extraction: no alt (missing, and empty), and an inline data: URL.
    for alt in (None, ""):
        b.add(pick(), b.base + b.serve(b.shape_resource("blue", "circle")[0]), alt, "no_alt")
    inline = base64.b64encode(_encode(shapes.render("red", "square", rng, 16), "png")).decode()
    b.add(pick(), f"data:image/png;base64,{inline}", "a red square", "data_url")

    _fill_curation(b, pick)

    # The bulk: three matches to two mismatches, dealt so that every well-formed page gets some
    # (not the pages that opt all their images out).
    bulk = [p for p in rest if not p.meta]
    fill = max(len(pages) * IMAGES_PER_PAGE - len(b.images), len(bulk))
    for n in range(fill):
        page = bulk[n % len(bulk)]
        if n % 5 < 3:
            b.shape(page, "match")
        else:
            b.mismatch(page)


def _fill_curation(b: _Builder, pick) -> None:
    """What issue B's curation must find: overlays for the tag heads, exact duplicates (the same
    bytes at two URLs), near duplicates (one render encoded twice at different sizes), and images
    named by the blocklists, by the MD5 of their bytes or the SHA256 of their URL."""
    rng = b.rng
    for overlay in shapes.OVERLAYS:
        for _ in range(3):
            b.overlaid(pick(), overlay)

    for group in range(2):
        for kind in ("exact_duplicate", "near_duplicate"):
            colour, shape = b.random_class()
            bg = shapes.random_background(colour, rng)
            image = shapes.render(colour, shape, rng, background_name=bg)
            if kind == "exact_duplicate":
                copies = [Resource(body=_encode(image, "jpeg"))] * 2
            else:
                smaller = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.Resampling.LANCZOS)
                copies = [Resource(body=_encode(image, "png"), content_type="image/png"), Resource(body=_encode(smaller, "jpeg"))]
            for resource in copies:
                b.add(pick(), b.base + b.serve(resource), shapes.caption(colour, shape, rng, bg), kind, clip="match",
                      group=f"{kind}-{group}", **{"class": [colour, shape]})

    for kind in ("blocklisted_image", "blocklisted_image", "blocklisted_url", "blocklisted_url"):
        colour, shape = b.random_class()
        resource, bg = b.shape_resource(colour, shape)
        url = b.add(pick(), b.base + b.serve(resource), shapes.caption(colour, shape, rng, bg), kind, clip="match",
                    **{"class": [colour, shape]})
        b.images[url]["md5"] = hashlib.md5(resource.body).hexdigest()
        b.images[url]["url_sha256"] = hashlib.sha256(url.encode()).hexdigest()


def _write_blocklists(images: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, str]:
    """The demo's hash lists; returns {file name: hash kind} for ``pairlake blocklist import``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    listed = [e for e in images.values() if e["kind"] in ("blocklisted_image", "blocklisted_url")]
    md5s = [e["md5"] for e in listed if e["kind"] == "blocklisted_image"]
    (out_dir / "image-md5.txt").write_text(
        "# demo hash list: MD5 of image bytes\n" + "".join(f"{h}\n" for h in md5s) + f"{'0' * 32}\n"
    )
    urls = [e["url_sha256"] for e in listed if e["kind"] == "blocklisted_url"]
    (out_dir / "url-sha256.csv").write_text("sha256,note\n" + "".join(f"{h},demo\n" for h in urls))
    return {"image-md5.txt": "image-md5", "url-sha256.csv": "url-sha256"}


_FILLER = (
    "Welcome back to our weekly roundup.",
    "Shipping is free on orders over fifty dollars.",
    "Readers asked us about shapes and colours, so here they are.",
    "This post was updated with new pictures.",
    "Leave a comment below and tell us what you think.",
    "All items are handmade in small batches.",
    "Scroll down for the full gallery.",
)


def _html(page: _Page, rng: np.random.Generator) -> bytes:
    # The malformed page front-loads text so that its truncation cuts off every <img>.
    paragraphs = 60 if page.malformed else int(rng.integers(1, 4))
    text = "\n".join(f"<p>{' '.join(rng.choice(_FILLER, 3))}</p>" for _ in range(paragraphs))
    figures = "\n".join(
        f'<figure><img src="{html.escape(src)}"'
        + ("" if alt is None else f' alt="{html.escape(alt)}"')
        + ' loading="lazy"></figure>'
        for src, alt in page.imgs
    )
    base = f'<base href="{html.escape(page.base_href)}">' if page.base_href else ""
    base += "".join(f'<meta name="{html.escape(n)}" content="{html.escape(c)}">' for n, c in sorted(page.meta.items()))
    doc = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="{page.charset}">{base}'
        f"<title>{html.escape(page.title)}</title></head>\n<body><h1>{html.escape(page.title)}</h1>\n"
        f"{text}\n{figures}\n</body></html>\n"
    )
    return doc.encode(page.charset)


class _WarcFile:
    """One .warc.gz laid out like Common Crawl's: warcinfo, then request/response/metadata."""

    def __init__(self, path: Path, rng: np.random.Generator, when: datetime) -> None:
        self.fh = path.open("wb")
        self.writer = WARCWriter(self.fh, gzip=True)
        self.rng = rng
        self.when = when
        self.info_id = self._id()
        info = b"software: pairlake sample_crawl\r\nformat: WARC File Format 1.0\r\nisPartOf: demo-crawl\r\n"
        self._write(None, "warcinfo", info, {"WARC-Record-ID": self.info_id, "WARC-Filename": path.name},
                    content_type="application/warc-fields")

    def _id(self) -> str:
        return f"<urn:uuid:{uuid.UUID(bytes=self.rng.bytes(16), version=4)}>"  # seeded, unlike warcio's

    def _record(self, uri: str | None, kind: str, payload: bytes, headers: dict[str, str],
                http: StatusAndHeaders | None = None, content_type: str = ""):
        self.when += timedelta(seconds=1)
        headers = {"WARC-Date": self.when.strftime("%Y-%m-%dT%H:%M:%SZ"), "WARC-Record-ID": self._id(), **headers}
        return self.writer.create_warc_record(uri or "", kind, payload=io.BytesIO(payload), length=len(payload),
                                              warc_headers_dict=headers, http_headers=http,
                                              warc_content_type=content_type)

    def _write(self, *args: Any, **kwargs: Any) -> None:
        self.writer.write_record(self._record(*args, **kwargs))

    def fetch(self, url: str, body: bytes, content_type: str, truncate: bool = False) -> None:
        """Write one fetch; ``truncate`` cuts the response's gzip member short, ending the file."""
        parts = urlsplit(url)
        linked = {"WARC-Warcinfo-ID": self.info_id}
        request = StatusAndHeaders(f"GET {parts.path} HTTP/1.1", [("Host", parts.netloc), ("User-Agent", "CCBot/2.0")],
                                   is_http_request=True)
        self._write(url, "request", b"", linked, request)
        response = StatusAndHeaders("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))],
                                    protocol="HTTP/1.1")
        record = self._record(url, "response", body, linked, response)
        if not truncate:
            self.writer.write_record(record)
            meta = f"fetchTimeMs: {int(self.rng.integers(50, 900))}\r\n".encode()
            self._write(url, "metadata", meta, {**linked, "WARC-Concurrent-To": record.rec_headers["WARC-Record-ID"]},
                        content_type="application/warc-fields")
            return
        buf = io.BytesIO()
        WARCWriter(buf, gzip=True).write_record(record)
        member = buf.getvalue()[: len(buf.getvalue()) // 3]  # a fetch cut short mid-transfer
        partial = zlib.decompressobj(wbits=31).decompress(member)
        assert b"<img" not in partial, "the truncated record must lose its images"
        self.fh.write(member)

    def close(self) -> None:
        self.fh.close()


def generator_fingerprint() -> str:
    """Changes whenever the code that draws the crawl does: a crawl made by older code is stale."""
    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(shapes.__file__).read_bytes())
    return digest.hexdigest()[:16]


def generate_sample_crawl(out_dir: Path, base_url: str, pages: int = 60, seed: int = 0, warc_files: int = 3) -> SampleCrawl:
    """Write a sample crawl (WARCs, the image server's site, expected.json) under ``out_dir``."""
    if pages < MIN_PAGES:
        raise ValueError(f"pages must be at least {MIN_PAGES}, got {pages}")
    if not 1 <= warc_files <= pages // 2:
        raise ValueError(f"warc_files must be between 1 and pages / 2, got {warc_files}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 0])
    builder = _Builder(base_url, rng)
    planned = _plan_pages(pages, warc_files, rng)
    _fill_pages(builder, planned)

    warc_dir = out_dir / "warcs"
    warc_dir.mkdir(parents=True, exist_ok=True)
    for stale in warc_dir.glob("*.warc.gz"):
        stale.unlink()
    warc_rng = np.random.default_rng([seed, 1])
    paths = [warc_dir / f"pairlake-sample-{seed:04d}-{i:05d}.warc.gz" for i in range(warc_files)]
    files = [_WarcFile(p, warc_rng, _CRAWL_START + timedelta(hours=i)) for i, p in enumerate(paths)]
    # A non-HTML response, as crawls have: extractors must skip it.
    non_html_url = f"http://{FAKE_HOSTS[0]}/media/banner.jpg"
    files[0].fetch(non_html_url, _encode(shapes.render("blue", "square", rng, 64), "jpeg"), "image/jpeg")
    for page in sorted(planned, key=lambda p: p.malformed):  # the malformed record goes last
        files[page.warc].fetch(page.url, _html(page, rng), f"text/html; charset={page.charset}", page.malformed)
    for f in files:
        f.close()

    site_dir = out_dir / "site"
    save_site(builder.resources, site_dir)
    blocklists = _write_blocklists(builder.images, out_dir / "blocklists")
    malformed = next(p for p in planned if p.malformed)
    expected = {
        "generator": generator_fingerprint(),
        "seed": seed,
        "base_url": builder.base,
        "warcs": [p.name for p in paths],
        "pages": [{"url": p.url, "warc": paths[p.warc].name, "charset": p.charset, "images": len(p.imgs),
                   "malformed": p.malformed} for p in planned],
        "malformed_record": {"warc": paths[malformed.warc].name, "url": malformed.url,
                             "how": "last record's gzip member truncated to a third"},
        "non_html_records": [non_html_url],
        "blocklists": blocklists,
        "kinds": sorted({e["kind"] for e in builder.images.values()}),
        "images": builder.images,
    }
    expected_path = out_dir / "expected.json"
    expected_path.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    return SampleCrawl(out_dir, builder.base, paths, site_dir, expected_path, builder.images)


def main(argv: list[str] | None = None) -> None:
    from infra.config import DemoConfig

    demo = DemoConfig()
    parser = argparse.ArgumentParser(description="Write the demo's sample crawl: WARCs, image site, ground truth.")
    parser.add_argument("--out", type=Path, default=Path(demo.crawl_dir))
    parser.add_argument("--base-url", default=f"http://127.0.0.1:{demo.server_port}")
    parser.add_argument("--pages", type=int, default=demo.pages)
    parser.add_argument("--seed", type=int, default=demo.seed)
    parser.add_argument("--warc-files", type=int, default=3)
    args = parser.parse_args(argv)
    crawl = generate_sample_crawl(args.out, args.base_url, args.pages, args.seed, args.warc_files)
    kinds: dict[str, int] = {}
    for entry in crawl.images.values():
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
    print(f"{len(crawl.warcs)} WARC files, {len(crawl.images)} image URLs under {args.out}: "
          + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
