"""Decode memory is bounded per downloader by ``download.decode_memory_mb`` (real Pillow decodes of
valid huge images, served by a real ImageServer, peak memory measured in a fresh process)."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image

from infra.image_server import ImageServer, Resource
from spark_jobs.download.resizer import ImageRejected, _libwebp_decode_size, decode_cost, resize_image
from tests.spark_jobs.test_download import CFG, allowing, fetch, make_image

ROOT = Path(__file__).resolve().parents[2]
SIDE = 6000  # 36 M pixels: within the pixel cap; ~138 MiB decoded as RGB, from a ~100 KB file


def huge_png(width: int, height: int) -> bytes:
    """A valid black RGB PNG, compressed row by row so that making it costs no pixel buffer."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" + bytes(width * 3)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# Runs in a fresh process, so that its peak RSS shows the decodes alone: four huge PNGs fetched at
# once and handed to four decode threads. The peak is /proc's VmHWM, reset to the current RSS just
# before (clear_refs 5): ru_maxrss carries the parent's peak over exec, and a pytest worker's peak
# would hide the decodes.
CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys
    import pyarrow as pa
    from infra.config import DownloadConfig
    from infra.image_server import ImageServer, Resource
    from spark_jobs.download import download_batch

    def peak_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmHWM:"))

    png = open(sys.argv[1], "rb").read()
    with ImageServer({f"/{i}.png": Resource(png, content_type="image/png") for i in range(4)}) as server:
        config = dataclasses.replace(
            DownloadConfig(), image_size=64, allow_hosts=(f"127.0.0.1:{server.port}",), **json.loads(sys.argv[2])
        )
        urls = [f"{server.url}/{i}.png" for i in range(4)]
        table = pa.table({"uid": [str(i) for i in range(4)], "url": urls, "warc_file": ["w"] * 4})
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = peak_mib()
        rows = download_batch(table, config, decode_threads=4).to_pylist()
    print(json.dumps({"grew_mib": peak_mib() - before, "errors": [r["error"] for r in rows]}))
    """
)


def run_child(png: Path, **config) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(png), json.dumps(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def png_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("decode") / "huge.png"
    path.write_bytes(huge_png(SIDE, SIDE))
    return path


def test_concurrent_huge_decodes_stay_under_the_budget(png_file):
    with Image.open(png_file) as img:
        one = decode_cost(img, dataclasses.replace(CFG, image_size=64)) >> 20
    assert 130 < one < 150  # each image alone fits the 200 MiB budget, two at once do not
    out = run_child(png_file, decode_memory_mb=200)
    assert out["errors"] == [None] * 4
    # Four threads decoding at once would hold ~4 × 138 MiB; within the budget one decode runs at a time.
    assert out["grew_mib"] < 200, out


def test_an_image_over_the_budget_alone_is_refused_before_decoding(png_file):
    out = run_child(png_file, decode_memory_mb=100)
    assert out["errors"] == ["decode_memory_exceeded"] * 4
    assert out["grew_mib"] < 30, out  # no pixel buffer was allocated


def test_refusal_is_a_final_row_reason(png_file):
    with ImageServer({"/huge.png": Resource(png_file.read_bytes(), content_type="image/png")}) as server:
        (row,) = fetch([server.url + "/huge.png"], allowing(server, decode_memory_mb=64))
    assert (row["status"], row["error"], row["retryable"]) == ("failed", "decode_memory_exceeded", False)
    assert row["http_status"] == 200
    assert "MiB" in row["error_detail"]


def test_jpeg_draft_decodes_within_a_budget_its_full_size_would_exceed():
    jpeg = make_image(4000, 3000)  # 46 MiB decoded at full size, 0.7 MiB at the 1/8 DCT scale
    small_budget = dataclasses.replace(CFG, decode_memory_mb=16)
    out = resize_image(jpeg, small_budget)
    assert (out.width, out.height, out.original_width, out.original_height) == (64, 64, 4000, 3000)
    with pytest.raises(ImageRejected) as exc:  # kept at full size, nothing to draft
        resize_image(jpeg, dataclasses.replace(small_budget, resize_mode="no"))
    assert exc.value.reason == "decode_memory_exceeded"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P"])
def test_cost_estimate_covers_the_flattening_copies(mode):
    buf = io.BytesIO()
    Image.new(mode, (200, 100)).save(buf, format="PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        cost = decode_cost(img, dataclasses.replace(CFG, resize_mode="no"))
    per_pixel = {"RGB": 4, "RGBA": 4 + 4 + 1, "LA": 4 + 4 + 4 + 1, "L": 1 + 4, "P": 1 + 4}[mode]
    assert cost == 200 * 100 * per_pixel


def big_webp(width: int, height: int, alpha: bool = False) -> bytes:
    """A lossy WebP of a gradient, translucent if ``alpha``, quick to encode."""
    gradient = Image.linear_gradient("L").resize((width, height))
    img = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_TOP_BOTTOM), gradient))
    if alpha:
        img.putalpha(200)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=50, method=0)
    return buf.getvalue()


def test_lossy_webp_decodes_scaled_within_a_budget_its_full_size_would_exceed():
    webp = big_webp(4000, 3000)  # 46 MiB as Pillow's RGB image alone, 183 MiB with its anim decoder
    small_budget = dataclasses.replace(CFG, decode_memory_mb=16)
    out = resize_image(webp, small_budget)
    assert (out.width, out.height, out.original_width, out.original_height) == (64, 64, 4000, 3000)
    with pytest.raises(ImageRejected) as exc:  # kept at full size: 7 bytes a pixel
        resize_image(webp, dataclasses.replace(small_budget, resize_mode="no"))
    assert exc.value.reason == "decode_memory_exceeded"


def test_webp_left_to_pillow_is_costed_with_its_anim_decoder():
    buf = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buf, format="WEBP", lossless=True)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert _libwebp_decode_size(buf.getvalue(), img, CFG) is None  # lossless: Pillow decodes it
        cost = decode_cost(img, dataclasses.replace(CFG, resize_mode="no"))
    assert cost == 200 * 100 * (4 + 12)  # its RGB image, two RGBA canvases and the frame's bytes


# A fresh process decodes one WebP (read from a file) with resize_image and prints how much its
# peak RSS grew, beside decode_cost's estimate for it (which a decode may not exceed). Peak RSS from
# /proc: reset to the current RSS first (clear_refs 5), as ru_maxrss carries the parent's over exec.
WEBP_CHILD = textwrap.dedent(
    """
    import dataclasses, io, json, sys
    from PIL import Image
    from infra.config import DownloadConfig
    from spark_jobs.download.decode_budget import DecodeBudget
    from spark_jobs.download.resizer import _libwebp_decode_size, decode_cost, resize_image

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith(field + ":"))

    data = open(sys.argv[1], "rb").read()
    config = dataclasses.replace(DownloadConfig(), image_size=64)
    budget = DecodeBudget.of(config)
    with Image.open(io.BytesIO(data)) as img:
        libwebp = _libwebp_decode_size(data, img, config)
        estimate = decode_cost(img, config, libwebp)
    warm_up = io.BytesIO()  # the imports and set-up of a first decode and encode, not measured
    Image.new(img.mode, (100, 100)).save(warm_up, format="WEBP")
    resize_image(warm_up.getvalue(), config, budget)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    resize_image(data, config, budget)
    print(json.dumps({"grew": status("VmHWM") - before, "estimate": estimate, "libwebp": libwebp is not None}))
    """
)


@pytest.mark.parametrize("alpha", [False, True])
def test_webp_decode_memory_stays_within_its_estimate(alpha, tmp_path):
    path = tmp_path / "big.webp"
    path.write_bytes(big_webp(3000, 3000, alpha))  # 9 M pixels
    done = subprocess.run([sys.executable, "-c", WEBP_CHILD, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["libwebp"] is not alpha  # with alpha, Pillow decodes it
    assert out["grew"] <= out["estimate"], out
    if not alpha:  # decoded straight to 64x43: a few MiB, not the ~34 MiB of a full-size RGB image
        assert out["estimate"] < 4 << 20, out
