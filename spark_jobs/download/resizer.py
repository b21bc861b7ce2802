"""Decode, check, resize and re-encode one image with Pillow (img2dataset's resize modes).

Size checks use the header only (``Image.open`` is lazy), so a decompression bomb or an absurd
aspect ratio is refused before any pixel is decoded. JPEGs are decoded with ``draft`` (DCT
scaling) at the smallest scale that still covers the target size, which is most of the speed and
divides their decode memory by up to 64. Still lossy WebPs (WebP photos) are decoded by libwebp
itself, scaled to the target size as they decode (``libwebp``). The memory a decode will take is
estimated from the header (after ``draft``) and reserved from the downloader's ``DecodeBudget``
before decoding; an image that alone exceeds the budget is refused (``decode_memory_exceeded``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from infra.config import DownloadConfig
from spark_jobs.download import libwebp
from spark_jobs.download.decode_budget import DecodeBudget

# Pillow warns on images above its own pixel limit; we enforce config.max_image_pixels instead
# (Pillow still raises DecompressionBombError above twice its limit, mapped to the same reason).
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_BORDER_COLOUR = (255, 255, 255)  # img2dataset pads with white
# Bytes per pixel Pillow stores; every mode not listed takes 4 (RGB included: RGBX in memory).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Pillow decodes every WebP through libwebp's WebPAnimDecoder, which holds two RGBA canvases (the
# frame and the disposed previous one) and hands the frame over as a bytes copy: 12 bytes a pixel
# beyond Pillow's own image (a 36 M pixel WebP grows the process by ~550 MiB, not ~140).
_WEBP_ANIM_DECODER_BYTES = 12
# What libwebp holds beside its output while it decodes a lossy WebP with scaling, per pixel of the
# image's width: the VP8 decoder's macroblock-row caches (~124 bytes) and the rescaler's rows (~27
# bytes per pixel of the narrower output width), rounded up.
_LIBWEBP_ROW_BYTES = 256


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ResizedImage:
    data: bytes
    format: str  # config.encode_format: jpg, png or webp
    width: int
    height: int
    original_width: int
    original_height: int


def target_size(width: int, height: int, mode: str, size: int) -> tuple[int, int]:
    """The size to scale (width, height) to before padding (border) or cropping (center_crop)."""
    if mode == "no":
        return width, height
    if mode in ("border", "keep_ratio_largest"):
        scale = size / max(width, height)
    else:  # keep_ratio, center_crop: the smallest side becomes ``size``
        scale = size / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_image(data: bytes, config: DownloadConfig, budget: DecodeBudget | None = None) -> ResizedImage:
    """Check and resize ``data`` within ``budget`` (default: a budget of its own, sized by
    ``config.decode_memory_mb``); raises ``ImageRejected`` with a reason code."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)[:300]) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("not_image", "Pillow cannot identify the data as an image") from None
    except Exception as exc:  # a header that parses halfway: corrupt, not "not an image"
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}"[:300]) from None
    with img:
        width, height = img.size
        _check_size(width, height, config)
        if config.resize_mode != "no":
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still covers the target size.
            img.draft("RGB", (config.image_size, config.image_size))
        webp_size = _libwebp_decode_size(data, img, config)
        budget = budget or DecodeBudget.of(config)
        cost = decode_cost(img, config, webp_size)
        if cost > budget.capacity:
            raise ImageRejected(
                "decode_memory_exceeded",
                f"{width}x{height} {img.mode} needs ~{cost >> 20} MiB to decode; budget {budget.capacity >> 20} MiB",
            )
        try:
            with budget.reserve(cost):
                out = _resize(img if webp_size is None else libwebp.decode_rgb(data, webp_size), config)
                buf = io.BytesIO()
                fmt = _PIL_FORMATS[config.encode_format]
                out.save(buf, format=fmt, **({} if fmt == "PNG" else {"quality": config.encode_quality}))
        except Exception as exc:  # truncated or corrupt data surfaces only when pixels are decoded
            raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}"[:300]) from None
    return ResizedImage(buf.getvalue(), config.encode_format, out.width, out.height, width, height)


def decode_cost(img: Image.Image, config: DownloadConfig, webp_size: tuple[int, int] | None = None) -> int:
    """Bytes ``_resize`` will hold at its peak for ``img`` (opened, drafted, not loaded): the
    decoded pixels, the copies that flatten them to RGB, and the resized and padded output.
    ``webp_size``: the size libwebp decodes ``img`` to (``_libwebp_decode_size``), if it does."""
    width, height = img.size
    padded = config.image_size**2 if config.resize_mode in ("border", "center_crop") else 0
    if webp_size is not None:  # libwebp's rows, its RGB output and Pillow's copy of it
        decoded = webp_size[0] * webp_size[1]
        out_width, out_height = target_size(*webp_size, config.resize_mode, config.image_size)
        resized = 0 if (out_width, out_height) == webp_size else out_width * (webp_size[1] + out_height)
        return _LIBWEBP_ROW_BYTES * width + decoded * (3 + 4) + 4 * (resized + padded)
    per_pixel = _PIXEL_BYTES.get(img.mode, 4)
    if img.format == "WEBP":
        per_pixel += _WEBP_ANIM_DECODER_BYTES
    if _has_alpha(img):
        per_pixel += (0 if img.mode == "RGBA" else 4) + 4 + 1  # RGBA copy, white background, alpha band
    elif img.mode != "RGB":
        per_pixel += 4  # the RGB copy
    out_width, out_height = target_size(width, height, config.resize_mode, config.image_size)
    resized = 0 if (out_width, out_height) == (width, height) else out_width * (height + out_height)  # two passes
    return width * height * per_pixel + 4 * (resized + padded)


def _check_size(width: int, height: int, config: DownloadConfig) -> None:
    if width * height > config.max_image_pixels:
        raise ImageRejected("decompression_bomb", f"{width}x{height} exceeds {config.max_image_pixels} pixels")
    if min(width, height) < config.min_image_size:
        raise ImageRejected("too_small", f"{width}x{height}: smallest side below {config.min_image_size}")
    if max(width, height) / max(1, min(width, height)) > config.max_aspect_ratio:
        raise ImageRejected("bad_aspect_ratio", f"{width}x{height}: aspect ratio above {config.max_aspect_ratio}")


def _resize(img: Image.Image, config: DownloadConfig) -> Image.Image:
    size, mode = config.image_size, config.resize_mode
    img.load()
    rgb = _to_rgb(img)
    new_size = target_size(*img.size, mode, size)  # img.size: after draft, which may have scaled it
    if new_size != rgb.size:
        # As img2dataset (cv2 INTER_AREA down, LANCZOS4 up): area averaging is the quality
        # downscale and ~3x cheaper than Lanczos, which would cost as much as the decode itself.
        shrinking = new_size[0] < rgb.width
        rgb = rgb.resize(new_size, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    if mode == "border":
        canvas = Image.new("RGB", (size, size), _BORDER_COLOUR)
        canvas.paste(rgb, ((size - rgb.width) // 2, (size - rgb.height) // 2))
        rgb = canvas
    elif mode == "center_crop":
        left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparent areas on white rather than on whatever colour they happen to hold."""
    if img.mode == "RGB":
        return img
    if _has_alpha(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BORDER_COLOUR)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _libwebp_decode_size(data: bytes, img: Image.Image, config: DownloadConfig) -> tuple[int, int] | None:
    """The size libwebp decodes ``img`` to (the target size when that is smaller, else its own),
    or None when Pillow decodes it: not a still lossy WebP without alpha, or no libwebp."""
    if img.format != "WEBP" or getattr(img, "is_animated", False) or img.mode != "RGB" or not isinstance(data, bytes):
        return None
    if not libwebp.is_still_lossy_rgb(data, img.size):
        return None
    new_width, new_height = target_size(*img.size, config.resize_mode, config.image_size)
    if new_width < img.width and new_height < img.height:
        return new_width, new_height
    return img.size  # not smaller: decoded at full size, scaled up (LANCZOS) by _resize as any image
