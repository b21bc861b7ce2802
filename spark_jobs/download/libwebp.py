"""Still lossy WebPs decoded by the libwebp Pillow ships, scaled while they decode.

Pillow 13 decodes every WebP, still or not, through WebPAnimDecoder: it zero-fills an RGBA canvas,
decodes into it, copies it to a second canvas (the disposed previous frame), copies it out as
bytes, and Pillow unpacks that into its image, all at full size; then the image is resized from
full size. Measured on 1-2 k px WebP photos, one thread: ~19 ms of VP8 decoding, ~25 ms of
memory traffic and page faults for the four full-size copies, ~7 ms of resizing. Pillow has no
other WebP decoder and no draft() for WebP. libwebp's own WebPDecode can scale while it decodes
(WebPDecoderOptions.use_scaling: area averaging, as the BOX downscale here) and needs no
full-size buffer for a lossy image: ~3x less CPU and ~550 MiB less memory for a 36 M pixel photo.

That libwebp is the one Pillow ships (or links), called through ctypes with decode.h's structs,
rather than a second copy from another package: PyPI's `webp` binds an older libwebp (1.3.2) and
leaves use_scaling out of its cdef; opencv-python-headless (57 MB) and imagecodecs (26 MB) decode
WebP at full size only. WebPInitDecoderConfigInternal refuses a libwebp of another ABI major
version, the only thing that could change these structs' layout; without a usable libwebp, every
WebP goes through Pillow as before.

Only still lossy WebPs without alpha take this path. Animations (Pillow's first frame is used)
and images with alpha (libwebp's scaler averages lossy colours without weighting them by alpha,
where flattening onto white first does) stay with Pillow, and so do lossless ones, whose decoder
holds the whole image at 4 bytes a pixel whatever the output size. EXIF orientation and ICC
profiles are ignored on both paths.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import PIL
from PIL import Image, features

_WEBP_DECODER_ABI = 0x0209  # decode.h's WEBP_DECODER_ABI_VERSION for these structs (any 0x02xx accepts it)
_MODE_RGB = 0  # WEBP_CSP_MODE
_LOSSY = 1  # WebPBitstreamFeatures.format


class _WebPBitstreamFeatures(ctypes.Structure):
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("has_alpha", ctypes.c_int),
                ("has_animation", ctypes.c_int), ("format", ctypes.c_int), ("pad", ctypes.c_uint32 * 5)]


class _WebPRGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _WebPYUVABuffer(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_void_p) for name in ("y", "u", "v", "a")),
                *((name, ctypes.c_int) for name in ("y_stride", "u_stride", "v_stride", "a_stride")),
                *((name, ctypes.c_size_t) for name in ("y_size", "u_size", "v_size", "a_size"))]


class _WebPDecBufferUnion(ctypes.Union):
    _fields_ = [("RGBA", _WebPRGBABuffer), ("YUVA", _WebPYUVABuffer)]


class _WebPDecBuffer(ctypes.Structure):
    _fields_ = [("colorspace", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int),
                ("is_external_memory", ctypes.c_int), ("u", _WebPDecBufferUnion), ("pad", ctypes.c_uint32 * 4),
                ("private_memory", ctypes.c_void_p)]


class _WebPDecoderOptions(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_int) for name in (
        "bypass_filtering", "no_fancy_upsampling", "use_cropping", "crop_left", "crop_top", "crop_width",
        "crop_height", "use_scaling", "scaled_width", "scaled_height", "use_threads", "dithering_strength", "flip",
        "alpha_dithering_strength")), ("pad", ctypes.c_uint32 * 5)]


class _WebPDecoderConfig(ctypes.Structure):
    _fields_ = [("input", _WebPBitstreamFeatures), ("output", _WebPDecBuffer), ("options", _WebPDecoderOptions)]


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The libwebp Pillow decodes WebP with (same version), or None."""
    wanted = features.version("webp")  # e.g. "1.6.0"; None without WebP support
    if not wanted:
        return None
    bundled = Path(PIL.__file__).resolve().parent.parent / "pillow.libs"  # manylinux wheels

    def candidates():
        yield from sorted(map(str, bundled.glob("libwebp-*.so*")))
        if system := ctypes.util.find_library("webp"):  # Pillow built against the system's libwebp
            yield system

    for path in candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        version = lib.WebPGetDecoderVersion()
        if f"{version >> 16}.{(version >> 8) & 0xFF}.{version & 0xFF}" != wanted:
            continue
        lib.WebPInitDecoderConfigInternal.argtypes = [ctypes.POINTER(_WebPDecoderConfig), ctypes.c_int]
        lib.WebPGetFeaturesInternal.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_WebPBitstreamFeatures), ctypes.c_int]
        lib.WebPDecode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_WebPDecoderConfig)]
        if lib.WebPInitDecoderConfigInternal(ctypes.byref(_WebPDecoderConfig()), _WEBP_DECODER_ABI):
            return lib
    return None


def is_still_lossy_rgb(data: bytes, size: tuple[int, int]) -> bool:
    """Whether libwebp is here and ``data`` is a still, lossy WebP without alpha of ``size``:
    what ``decode_rgb`` takes."""
    lib = _library()
    found = _WebPBitstreamFeatures()
    if lib is None or lib.WebPGetFeaturesInternal(data, len(data), ctypes.byref(found), _WEBP_DECODER_ABI) != 0:
        return False
    still_lossy = not found.has_animation and not found.has_alpha and found.format == _LOSSY
    return still_lossy and (found.width, found.height) == size


def decode_rgb(data: bytes, size: tuple[int, int]) -> Image.Image:
    """``data`` (a still lossy WebP, ``is_still_lossy_rgb``) decoded by libwebp to an RGB image of
    ``size``: scaled while it decodes when ``size`` is not its own."""
    lib = _library()
    config = _WebPDecoderConfig()
    if lib is None or not lib.WebPInitDecoderConfigInternal(ctypes.byref(config), _WEBP_DECODER_ABI):
        raise OSError("libwebp: cannot set up the decoder")
    width, height = size
    lib.WebPGetFeaturesInternal(data, len(data), ctypes.byref(config.input), _WEBP_DECODER_ABI)
    if (config.input.width, config.input.height) != size:
        config.options.use_scaling, config.options.scaled_width, config.options.scaled_height = 1, width, height
    pixels = bytearray(3 * width * height)
    config.output.colorspace, config.output.is_external_memory = _MODE_RGB, 1
    rgb = config.output.u.RGBA
    rgb.rgba, rgb.stride, rgb.size = ctypes.addressof(ctypes.c_char.from_buffer(pixels)), 3 * width, len(pixels)
    status = lib.WebPDecode(data, len(data), ctypes.byref(config))  # ctypes lets go of the GIL meanwhile
    if status != 0:
        raise OSError(f"libwebp cannot decode the image (VP8StatusCode {status})")
    return Image.frombuffer("RGB", size, pixels, "raw", "RGB", 0, 1)
