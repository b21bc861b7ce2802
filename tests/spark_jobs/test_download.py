"""The download stage against a real ImageServer on 127.0.0.1 with real Pillow images (no mocks)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import resource
import struct
import time
import zlib

import pyarrow as pa
import pytest
import numpy as np
from PIL import Image, ImageDraw

from infra.config import DownloadConfig
from infra.image_server import ImageServer, Resource
from infra.tables import IMAGES
from spark_jobs.download import download_batch
from infra.config import ConfigError
from spark_jobs.download.address_guard import AddressGuard, _literal_ip
from spark_jobs.download.fetcher import is_retryable, x_robots_tag_opts_out
from spark_jobs.download import libwebp
from spark_jobs.download.resizer import ImageRejected, resize_image

# Short deadlines keep the suite quick. Loopback is refused: ``allowing`` lets a test's servers in.
CFG = dataclasses.replace(
    DownloadConfig(),
    image_size=64,
    min_image_size=16,
    max_body_bytes=2_000_000,
    timeout_s=1.0,
    retries=1,
    backoff_s=0.01,
)


def allowing(*servers: ImageServer, config: DownloadConfig = CFG, **changes) -> DownloadConfig:
    """``config`` with the servers' loopback ports allowed, as the demo config allows its server's."""
    return dataclasses.replace(config, allow_hosts=tuple(f"127.0.0.1:{s.port}" for s in servers), **changes)


def make_image(width: int, height: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A gradient (so JPEG data is not trivially small), encoded as ``fmt``."""
    vertical = Image.linear_gradient("L")
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)
    bands = (vertical.resize((width, height)), horizontal.resize((width, height)), Image.new("L", (width, height), 128))
    img = Image.merge("RGB", bands).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def candidates(urls: list[str | None]) -> pa.Table:
    return pa.table(
        {"uid": [f"u{i}" for i in range(len(urls))], "url": urls, "warc_file": ["w0.warc.gz"] * len(urls)},
        schema=pa.schema([("uid", pa.string()), ("url", pa.string()), ("warc_file", pa.string())]),
    )


def fetch(urls: list[str | None], config: DownloadConfig) -> list[dict]:
    out = download_batch(candidates(urls), config)
    assert out.schema.equals(IMAGES.schema)
    assert out.num_rows == len(urls)
    return out.to_pylist()


def fetch_one(url: str, config: DownloadConfig) -> dict:
    return fetch([url], config)[0]


JPEG = make_image(400, 300)
TRUNCATED = make_image(600, 600)[:3000]
BIG_BODY = 32 * 1024 * 1024  # far more than loopback socket buffers can hold unread
BIG = b"\0" * BIG_BODY

SITE = {
    "/ok.jpg": Resource(JPEG),
    "/slow-ok.jpg": Resource(JPEG, delay_s=0.3),
    "/timeout.jpg": Resource(JPEG, delay_s=3.0),
    "/missing.jpg": None,  # not served: 404
    "/gone.jpg": Resource(b"gone", status=410, content_type="text/plain"),
    "/busy.jpg": Resource(b"busy", status=503, content_type="text/plain"),
    "/page.jpg": Resource(b"<html><body>not an image</body></html>", content_type="text/html"),
    "/truncated.jpg": Resource(TRUNCATED),
    "/tiny.jpg": Resource(make_image(10, 10)),
    "/banner.jpg": Resource(make_image(400, 100)),
    "/bomb.png": Resource(png_header(60_000, 60_000), content_type="image/png"),
    "/huge.jpg": Resource(BIG),
    "/huge-chunked.jpg": Resource(b"\xff" * (CFG.max_body_bytes + 1), headers={"Transfer-Encoding": "chunked"}),
    "/noai.jpg": Resource(BIG, headers={"X-Robots-Tag": "noai"}),
    "/redirect.jpg": Resource(redirect_to="/ok.jpg"),
    "/loop-a": Resource(redirect_to="/loop-b"),
    "/loop-b": Resource(redirect_to="/loop-a"),
    "/to-metadata": Resource(redirect_to="http://169.254.169.254/latest/meta-data/"),
}

EXPECTED_FAILURES = {
    # path: (error, retryable, http_status)
    "/timeout.jpg": ("timeout", True, None),
    "/missing.jpg": ("http_404", False, 404),
    "/gone.jpg": ("http_410", False, 410),
    "/busy.jpg": ("http_503", True, 503),
    "/page.jpg": ("not_image", False, 200),
    "/truncated.jpg": ("decode_error", False, 200),
    "/tiny.jpg": ("too_small", False, 200),
    "/banner.jpg": ("bad_aspect_ratio", False, 200),
    "/bomb.png": ("decompression_bomb", False, 200),
    "/huge.jpg": ("too_large", False, 200),
    "/huge-chunked.jpg": ("too_large", False, 200),
    "/noai.jpg": ("opted_out:x-robots-tag", False, 200),
    "/loop-a": ("too_many_redirects", False, None),
    "/to-metadata": ("address_refused", False, None),
}


@pytest.fixture(scope="module")
def site():
    """The shared site and the rows of one batch over all of it (fetched once for the module)."""
    with ImageServer({path: res for path, res in SITE.items() if res is not None}) as server:
        paths = list(SITE)
        rows = fetch([server.url + p for p in paths], allowing(server))
        yield server, dict(zip(paths, rows))


@pytest.mark.parametrize("path", sorted(EXPECTED_FAILURES))
def test_failure_reason(site, path):
    _, rows = site
    row = rows[path]
    error, retryable, http_status = EXPECTED_FAILURES[path]
    assert (row["status"], row["error"], row["retryable"]) == ("failed", error, retryable)
    assert row["http_status"] == http_status
    assert row["error_detail"] and row["image"] is None and row["fetched_at"] is not None
    assert row["attempts"] == (CFG.retries + 1 if retryable else 1)


def test_ok_row_describes_original_and_resized_image(site):
    server, rows = site
    row = rows["/ok.jpg"]
    assert (row["status"], row["error"], row["retryable"]) == ("ok", None, False)
    assert (row["http_status"], row["attempts"], row["final_url"]) == (200, 1, server.url + "/ok.jpg")
    assert (row["sha256"], row["sha1"], row["md5"]) == tuple(hashlib.new(h, JPEG).hexdigest() for h in ("sha256", "sha1", "md5"))
    assert (row["original_width"], row["original_height"], row["original_bytes"]) == (400, 300, len(JPEG))
    assert (row["width"], row["height"], row["image_format"]) == (64, 64, "jpg")
    with Image.open(io.BytesIO(row["image"])) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (64, 64), "RGB")


def test_slow_but_within_deadline_is_ok(site):
    _, rows = site
    assert rows["/slow-ok.jpg"]["status"] == "ok"


def test_retryable_failures_are_retried(site):
    server, rows = site
    assert server.access_log.count(("GET", "/busy.jpg")) == CFG.retries + 1
    assert server.access_log.count(("GET", "/missing.jpg")) == 1


def test_redirect_followed(site):
    server, rows = site
    row = rows["/redirect.jpg"]
    assert row["status"] == "ok" and row["final_url"] == server.url + "/ok.jpg"
    assert row["sha256"] == hashlib.sha256(JPEG).hexdigest()
    assert rows["/to-metadata"]["final_url"] == "http://169.254.169.254/latest/meta-data/"


def test_opted_out_body_never_read(site):
    server, _ = site
    # The client hung up after the headers: the server could not write the whole body.
    assert ("GET", "/noai.jpg") in server.access_log
    assert server.bytes_sent.get("/noai.jpg", 0) < BIG_BODY


def test_oversized_body_refused_by_content_length_before_reading(site):
    server, _ = site
    assert server.bytes_sent.get("/huge.jpg", 0) < BIG_BODY


def test_decompression_bomb_does_not_allocate():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageRejected) as exc:
        resize_image(png_header(60_000, 60_000), CFG)  # 3.6 G pixels if decoded
    assert exc.value.reason == "decompression_bomb"
    # Below Pillow's own limit, config.max_image_pixels decides.
    with pytest.raises(ImageRejected) as exc:
        resize_image(make_image(1200, 1000), dataclasses.replace(CFG, max_image_pixels=1_000_000))
    assert exc.value.reason == "decompression_bomb"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


@pytest.mark.parametrize(
    "value, ours",
    [
        ("noai", True),
        ("noimageai", True),
        ("noindex, nofollow", True),
        ("NoImageIndex", True),
        ("pairlake: noai", True),
        ("otherbot: noai", False),
        ("nofollow", False),
        ("max-image-preview: none", False),
        ("unavailable_after: 25 Jun 2010 15:00:00 PST, noimageai", True),
    ],
)
def test_x_robots_tag_parsing(value, ours):
    assert x_robots_tag_opts_out([value], CFG.user_agent) is ours


def test_x_robots_tag_ignored_when_not_honoured():
    with ImageServer({"/a.jpg": Resource(JPEG, headers={"X-Robots-Tag": "noai, noimageai"})}) as server:
        assert fetch_one(server.url + "/a.jpg", allowing(server))["error"] == "opted_out:x-robots-tag"
        assert fetch_one(server.url + "/a.jpg", allowing(server, honour_x_robots_tag=False))["status"] == "ok"


def test_robots_txt_disallow():
    robots = b"User-agent: *\nDisallow: /private/\n\nUser-agent: pairlake\nDisallow: /no-pairlake/\n"
    site = {
        "/robots.txt": Resource(robots, content_type="text/plain"),
        "/private/a.jpg": Resource(JPEG),
        "/no-pairlake/a.jpg": Resource(JPEG),
        "/public/a.jpg": Resource(JPEG),
        "/public/b.jpg": Resource(JPEG),
    }
    with ImageServer(site) as server:
        paths = ["/private/a.jpg", "/no-pairlake/a.jpg", "/public/a.jpg", "/public/b.jpg"]
        rows = fetch([server.url + p for p in paths], allowing(server))
        assert [r["error"] for r in rows] == [None, "robots_disallowed", None, None]
        assert ("GET", "/no-pairlake/a.jpg") not in server.access_log
        assert server.access_log.count(("GET", "/robots.txt")) == 1  # once per host, shared by all its URLs
        # "User-agent: pairlake" is the group that applies to us, so the "*" group's /private/ does not.
        assert rows[0]["status"] == "ok"

    with ImageServer(site) as server:
        config = allowing(server, honour_robots_txt=False, honour_robots_txt_ai_agents=False)
        row = fetch_one(server.url + "/no-pairlake/a.jpg", config)
        assert row["status"] == "ok" and ("GET", "/robots.txt") not in server.access_log


def test_robots_txt_server_error_is_retryable_and_skips_the_image():
    with ImageServer({"/robots.txt": Resource(b"", status=503), "/a.jpg": Resource(JPEG)}) as server:
        row = fetch_one(server.url + "/a.jpg", allowing(server))
        assert (row["error"], row["retryable"]) == ("robots_unavailable", True)
        assert ("GET", "/a.jpg") not in server.access_log


def test_loopback_refused_unless_allowed():
    with ImageServer({"/a.jpg": Resource(JPEG)}) as server:
        for host in ("127.0.0.1", "localhost", "127.1"):
            url = f"http://{host}:{server.port}/a.jpg"
            row = fetch_one(url, CFG)
            assert (row["error"], row["retryable"], row["attempts"]) == ("address_refused", False, 1), url
        assert server.access_log == []  # not even robots.txt: nothing connected
        assert fetch_one(server.url + "/a.jpg", allowing(server))["status"] == "ok"
        for allow, host in [("127.0.0.0/8", "127.0.0.1"), ("localhost", "localhost")]:
            config = dataclasses.replace(CFG, allow_hosts=(f"{allow}:{server.port}",))
            assert fetch_one(f"http://{host}:{server.port}/a.jpg", config)["status"] == "ok", allow


def test_allowed_host_is_allowed_on_its_port_only():
    with ImageServer({"/a.jpg": Resource(JPEG)}) as listed, ImageServer({"/a.jpg": Resource(JPEG)}) as other:
        for allow in (f"127.0.0.1:{listed.port}", f"127.0.0.0/8:{listed.port}", f"localhost:{listed.port}"):
            config = dataclasses.replace(CFG, allow_hosts=(allow,))
            host = "localhost" if allow.startswith("localhost") else "127.0.0.1"
            assert fetch_one(f"http://{host}:{listed.port}/a.jpg", config)["status"] == "ok", allow
            row = fetch_one(f"http://{host}:{other.port}/a.jpg", config)
            assert (row["error"], row["retryable"], row["attempts"]) == ("address_refused", False, 1), allow
            # A redirect from the listed port to another port of the same host is refused too.
            listed.add("/hop", Resource(redirect_to=f"http://{host}:{other.port}/a.jpg"))
            assert fetch_one(f"http://{host}:{listed.port}/hop", config)["error"] == "address_refused", allow
        assert other.access_log == []


@pytest.mark.parametrize(
    "entry", ["127.0.0.1", "localhost", "10.0.0.0/8", "[::1]", "::1", "127.0.0.1:", "127.0.0.1:http", ":80"]
)
def test_allow_list_entry_without_a_port_is_a_config_error(entry):
    with pytest.raises(ConfigError) as exc:
        download_batch(candidates(["http://example.com/a.jpg"]), dataclasses.replace(CFG, allow_hosts=(entry,)))
    message = str(exc.value)
    assert "\n" not in message and repr(entry) in message and "download.allow_hosts" in message


def test_redirect_to_a_refused_address():
    # 127.0.0.1 is allowed but 127.0.0.2 is not: the guard applies to every hop.
    with ImageServer() as server:
        server.add("/hop", Resource(redirect_to=f"http://127.0.0.2:{server.port}/a.jpg"))
        row = fetch_one(server.url + "/hop", allowing(server))
        assert row["error"] == "address_refused" and row["final_url"] == f"http://127.0.0.2:{server.port}/a.jpg"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://2852039166/latest/meta-data/",  # 169.254.169.254 as one decimal number
        "http://[fd00::1]/a.jpg",
        "http://0.0.0.0/a.jpg",
    ],
)
def test_private_addresses_refused_without_connecting(url):
    start = time.monotonic()
    row = fetch_one(url, dataclasses.replace(CFG, timeout_s=5.0, allow_hosts=("10.0.0.0/8:8080",)))
    assert (row["error"], row["retryable"], row["attempts"], row["http_status"]) == ("address_refused", False, 1, None)
    assert time.monotonic() - start < 2.0  # no connect attempt, let alone the 5 s deadline


def test_address_guard_rules():
    guard = AddressGuard(["127.0.0.1:8080", "192.168.0.0/16:443", "images.internal:80", "[fd00::/8]:443"])
    allowed = {"127.0.0.1": True, "127.0.0.2": False, "192.168.4.5": True, "10.0.0.1": False, "8.8.8.8": True,
               "100.64.0.1": False, "224.0.0.1": False, "::1": False, "2606:4700::1111": True, "::ffff:10.0.0.1": False,
               "fd12::1": True, "::ffff:192.168.0.1": True}
    ports = {"127.0.0.1": 8080, "192.168.4.5": 443, "fd12::1": 443, "::ffff:192.168.0.1": 443}
    for ip, expected in allowed.items():
        assert guard.allowed_ip(_literal_ip(ip), ports.get(ip, 80)) is expected, ip
    for ip, port in ports.items():  # listed networks on any other port: refused like any private address
        assert not guard.allowed_ip(_literal_ip(ip), port + 1), ip
    assert guard.allowed_name("Images.Internal.", 80) and not guard.allowed_name("images.internal", 8080)
    assert not guard.allowed_name("images.external", 80)


@pytest.mark.parametrize(
    "mode, size, expected",
    [
        ("no", (400, 200), (400, 200)),
        ("border", (400, 200), (64, 64)),
        ("border", (200, 400), (64, 64)),
        ("keep_ratio", (400, 200), (128, 64)),
        ("keep_ratio", (200, 400), (64, 128)),
        ("keep_ratio", (40, 30), (85, 64)),  # small images are scaled up, as img2dataset does
        ("keep_ratio_largest", (400, 200), (64, 32)),
        ("keep_ratio_largest", (200, 400), (32, 64)),
        ("center_crop", (400, 200), (64, 64)),
        ("center_crop", (2000, 1000), (64, 64)),  # JPEG draft decoding path
    ],
)
def test_resize_modes(mode, size, expected):
    out = resize_image(make_image(*size), dataclasses.replace(CFG, resize_mode=mode))
    assert (out.width, out.height) == expected
    assert (out.original_width, out.original_height) == size
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.size == expected and img.mode == "RGB"


def test_border_pads_with_white_and_keeps_content_centred():
    with Image.open(io.BytesIO(resize_image(make_image(400, 200), CFG).data)) as img:
        assert min(img.getpixel((32, 2))) > 240  # top padding
        assert min(img.getpixel((32, 61))) > 240  # bottom padding
        assert img.getpixel((2, 32)) != img.getpixel((61, 32))  # the gradient runs left to right


@pytest.mark.parametrize("encode_format, pil_format", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_encode_formats_and_transparency(encode_format, pil_format):
    rgba = make_image(100, 100, fmt="PNG", mode="RGBA")
    transparent = io.BytesIO()
    Image.new("RGBA", (100, 100), (0, 0, 0, 0)).save(transparent, format="PNG")
    config = dataclasses.replace(CFG, encode_format=encode_format)
    assert resize_image(rgba, config).format == encode_format
    out = resize_image(transparent.getvalue(), config)
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.format == pil_format and img.mode == "RGB"
        assert min(img.getpixel((32, 32))) > 240  # transparent → white, not black


def webp_photo(width: int, height: int, **save) -> bytes:
    """A lossy WebP (unless ``save`` says otherwise) of a gradient with sharp-edged shapes on it."""
    img = Image.open(io.BytesIO(make_image(width, height, fmt="PNG")))
    draw = ImageDraw.Draw(img)
    for i in range(6):
        box = (width * i // 7, height * i // 9, width * (i + 2) // 7, height * (i + 3) // 9)
        draw.ellipse(box, fill=(40 * i, 255 - 40 * i, 90))
    buf = io.BytesIO()
    img.save(buf, format="WEBP", **{"quality": 80, "method": 0, **save})
    return buf.getvalue()


def decoded(out) -> np.ndarray:
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.mode == "RGB"
        return np.asarray(img, dtype=np.int16)


@pytest.fixture
def libwebp_decodes(monkeypatch) -> list[tuple[int, int]]:
    """The sizes ``resize_image`` has libwebp decode to (the real decode, recorded)."""
    assert libwebp._library() is not None, "Pillow's libwebp not found: every WebP would go the slow way"
    sizes, decode = [], libwebp.decode_rgb
    monkeypatch.setattr(libwebp, "decode_rgb", lambda data, size: (sizes.append(size), decode(data, size))[1])
    return sizes


@pytest.mark.parametrize(
    "mode, size, scaled_to",
    [
        ("border", (1200, 800), (64, 43)),
        ("center_crop", (800, 1200), (64, 96)),
        ("keep_ratio_largest", (1000, 1000), (64, 64)),
        ("keep_ratio", (40, 30), (40, 30)),  # scaled up: decoded at full size, then LANCZOS as any image
        ("no", (300, 200), (300, 200)),
    ],
)
def test_still_lossy_webp_is_decoded_by_libwebp_like_pillow(mode, size, scaled_to, libwebp_decodes, monkeypatch):
    webp, config = webp_photo(*size), dataclasses.replace(CFG, resize_mode=mode)
    fast = resize_image(webp, config)
    assert libwebp_decodes == [scaled_to]
    monkeypatch.setattr(libwebp, "_library", lambda: None)  # as without libwebp: Pillow decodes it
    slow = resize_image(webp, config)
    assert libwebp_decodes == [scaled_to]
    assert (fast.width, fast.height, fast.original_width, fast.original_height) == (
        slow.width, slow.height, slow.original_width, slow.original_height)
    assert (fast.original_width, fast.original_height) == size
    difference = np.abs(decoded(fast) - decoded(slow))
    assert difference.mean() < 2.5 and np.percentile(difference, 99) < 20, (difference.mean(), difference.max())


def animated_webp(*colours: tuple[int, int, int]) -> bytes:
    frames = [Image.new("RGB", (120, 80), colour) for colour in colours]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    return buf.getvalue()


def test_webps_libwebp_leaves_to_pillow(libwebp_decodes):
    animated = animated_webp((200, 30, 30), (30, 30, 200))
    with Image.open(io.BytesIO(animated)) as img:
        assert img.is_animated
    out = decoded(resize_image(animated, CFG))
    assert out.shape == (64, 64, 3)
    assert tuple(out[32, 32]) == pytest.approx((200, 30, 30), abs=8)  # the first frame
    assert out[2, 32].min() > 240  # padded with white above the 120x80 frame

    lossy_alpha = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(lossy_alpha).rectangle((0, 0, 99, 199), fill=(20, 20, 220, 255))
    buf = io.BytesIO()
    lossy_alpha.save(buf, format="WEBP", quality=90)
    out = decoded(resize_image(buf.getvalue(), CFG))
    assert out[32, 48].min() > 240  # transparent → white
    assert tuple(out[32, 16]) == pytest.approx((20, 20, 220), abs=12)

    out = resize_image(webp_photo(300, 200, lossless=True), CFG)
    assert (out.width, out.height, out.original_width, out.original_height) == (64, 64, 300, 200)
    assert libwebp_decodes == []


def test_webp_size_checks_come_before_any_decode(libwebp_decodes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    webp = webp_photo(1200, 1000)
    with pytest.raises(ImageRejected) as exc:
        resize_image(webp, dataclasses.replace(CFG, max_image_pixels=1_000_000))
    assert exc.value.reason == "decompression_bomb"
    # A lossy WebP's frame header claiming 16383x16383 (268 M pixels), with almost no data.
    assert webp[12:16] == b"VP8 " and webp[23:26] == b"\x9d\x01\x2a"
    bomb = webp[:26] + struct.pack("<HH", 16383, 16383) + webp[30:200]
    with pytest.raises(ImageRejected) as exc:
        resize_image(bomb, CFG)
    assert exc.value.reason == "decompression_bomb"
    with pytest.raises(ImageRejected) as exc:  # within the pixel cap: libwebp runs out of data
        resize_image(webp[:26] + struct.pack("<HH", 4000, 4000) + webp[30:], CFG)
    assert exc.value.reason == "decode_error"
    assert libwebp_decodes == [(64, 64)]  # that last one only, which failed cleanly
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


def test_one_row_per_input_with_duplicates_and_bad_urls():
    with ImageServer({"/a.jpg": Resource(JPEG)}) as server:
        a = server.url + "/a.jpg"
        urls = [a, "", "not a url", a, "ftp://example.com/x.jpg", "http://", "http://[::1", None, a]
        out = download_batch(candidates(urls), allowing(server))
        assert out.schema.equals(IMAGES.schema) and out.num_rows == len(urls)
        assert out.column("uid").to_pylist() == [f"u{i}" for i in range(len(urls))]
        assert out.column("status").to_pylist() == ["ok"] + ["failed"] * 2 + ["ok"] + ["failed"] * 4 + ["ok"]
        assert set(out.column("error").to_pylist()) == {None, "bad_url"}
        assert server.access_log.count(("GET", "/a.jpg")) == 1  # fetched once for its three rows
    empty = download_batch(candidates([]), CFG)
    assert empty.num_rows == 0 and empty.schema.equals(IMAGES.schema)


@pytest.mark.parametrize("concurrency, per_host, expected", [(64, 3, 3), (2, 8, 2)])
def test_concurrency_limits(concurrency, per_host, expected):
    with ImageServer({f"/{i}.jpg": Resource(JPEG, delay_s=0.3) for i in range(10)}) as server:
        config = allowing(
            server, concurrency=concurrency, per_host_concurrency=per_host, honour_robots_txt=False, timeout_s=5.0
        )
        rows = fetch([f"{server.url}/{i}.jpg" for i in range(10)], config)
        assert all(r["status"] == "ok" for r in rows)
        assert server.max_in_flight == expected


def test_callable_from_running_event_loop():
    async def inside_a_loop() -> pa.Table:
        return download_batch(candidates(["bad"]), CFG)

    assert asyncio.run(inside_a_loop()).column("error").to_pylist() == ["bad_url"]


def test_retryable_reasons():
    retryable = ["timeout", "connection_error", "http_429", "http_500", "http_503", "http_408", "host_unresponsive",
                 "robots_unavailable", "tdmrep_unavailable", "ai_txt_unavailable"]
    assert all(map(is_retryable, retryable))
    final = ["http_404", "http_403", "not_image", "address_refused", "robots_disallowed", "decode_memory_exceeded",
             *(f"opted_out:{s}" for s in ("x-robots-tag", "tdm-header", "tdmrep-json", "ai-txt", "robots-txt"))]
    assert not any(map(is_retryable, final))
