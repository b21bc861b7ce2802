"""Synthetic captioned images: coloured shapes with templated captions, deterministic from a seed.

The demo CLIP model trains on these and the sample crawl serves them, so both see one
distribution. Rendering is layered (``background`` → ``draw_shape`` → ``add_noise``); each layer
takes and returns a PIL image, so further layers (a text overlay for watermark images, say)
compose onto any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 160, 60),
    "blue": (35, 80, 215),
    "purple": (135, 50, 175),
    "pink": (245, 120, 185),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light grey": (205, 205, 205),
    "cream": (245, 235, 205),
    "pale blue": (205, 222, 245),
    "dark grey": (70, 70, 70),
}
# A shape needs this much RGB distance from its background to stay legible after a 64 px resize.
_MIN_CONTRAST = 100.0

# "{a}" is the article for the colour word, so "an orange star" reads right.
TEMPLATES: tuple[str, ...] = (
    "{a} {c} {s}",
    "{c} {s}",
    "a photo of {a} {c} {s}",
    "a picture of {a} {c} {s}",
    "a drawing of {a} {c} {s}",
    "an image of {a} {c} {s}",
    "a simple {c} {s} shape",
    "{a} {c} {s} on a {bg} background",
    "a photo of {a} {c} {s} on a {bg} background",
)

# Rendered sizes (longest side) span both sides of the downloader's 256 px so that training sees
# up- and down-scaled images alike.
MIN_SIDE, MAX_SIDE = 96, 384
MAX_ASPECT = 1.3


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def captions(colour: str, shape: str, background: str | None = None) -> list[str]:
    """Every templated caption for one image; background templates only when it is known."""
    return [
        t.format(a=_article(colour), c=colour, s=shape, bg=background)
        for t in TEMPLATES
        if background is not None or "{bg}" not in t
    ]


def caption(colour: str, shape: str, rng: np.random.Generator, background: str | None = None) -> str:
    """One templated caption, e.g. "a photo of a blue star on a white background"."""
    options = captions(colour, shape, background)
    return options[int(rng.integers(len(options)))]


def random_background(colour: str, rng: np.random.Generator) -> str:
    """A background name with enough contrast against ``colour``."""
    shape_rgb = np.array(COLOURS[colour])
    legible = [n for n, rgb in BACKGROUNDS.items() if np.linalg.norm(shape_rgb - rgb) >= _MIN_CONTRAST]
    return legible[int(rng.integers(len(legible)))]


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """A crawl-like (width, height): longest side in [MIN_SIDE, MAX_SIDE], aspect ≤ MAX_ASPECT."""
    longest = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    shortest = int(round(longest / rng.uniform(1.0, MAX_ASPECT)))
    return (longest, shortest) if rng.random() < 0.5 else (shortest, longest)


def _jitter(rgb: Sequence[int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))  # type: ignore[return-value]


def background(size: tuple[int, int], name: str, rng: np.random.Generator) -> Image.Image:
    """A fill of the named background colour, flat or with a gentle corner-to-corner grade."""
    base = _jitter(BACKGROUNDS[name], rng, 8)
    if rng.random() < 0.5:
        return Image.new("RGB", size, base)
    # Bilinearly stretching a 2×2 image of ±20-level corners is a cheap smooth grade.
    corners = Image.new("RGB", (2, 2))
    corners.putdata([_jitter(base, rng, 20) for _ in range(4)])
    return corners.resize(size, Image.Resampling.BILINEAR)


def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` inscribed in the circle (cx, cy, r), rotated by ``rotation``."""
    if shape == "square":
        points = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        points = [
            (k * math.cos(a), k * math.sin(a))
            for i, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)
            for k in [1.0 if i % 2 == 0 else 0.42]
        ]
    elif shape == "cross":
        t = 0.3  # half the bar thickness, relative to r
        points = [(t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t), (-t, -1)]
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    cos, sin = math.cos(rotation), math.sin(rotation)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def draw_shape(image: Image.Image, shape: str, rgb: Sequence[int], rng: np.random.Generator) -> Image.Image:
    """A copy of ``image`` with one ``shape`` in ``rgb`` at a random position, size and rotation.

    Shapes fill a good part of the frame, near its centre and near one of four orientations: at
    the demo model's 64 px they stay recognisable, and a tiny model learns them in minutes."""
    out = image.copy()
    w, h = out.size
    r = rng.uniform(0.36, 0.46) * min(w, h)
    # Near the centre: a ViT without convolutions learns position invariance slowly.
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h
    cx, cy = min(max(cx, r), w - r), min(max(cy, r), h - r)
    fill = _jitter(rgb, rng, 15)
    draw = ImageDraw.Draw(out)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(r * rng.uniform(0.3, 0.4))))
    else:
        rotation = int(rng.integers(4)) * math.pi / 2 + rng.uniform(-0.2, 0.2)
        draw.polygon(_polygon(shape, cx, cy, r, rotation), fill=fill)
    return out


def add_noise(image: Image.Image, rng: np.random.Generator, max_std: float = 12.0) -> Image.Image:
    """Grey film grain of a random strength up to ``max_std`` levels."""
    w, h = image.size
    # Drawn at half resolution and doubled: a quarter of the random numbers, and coarser grain.
    grain = rng.normal(0, rng.uniform(0, max_std), ((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
    grain = grain.repeat(2, axis=0).repeat(2, axis=1)[:h, :w, None]
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


# Overlays for the demo's tag heads (issue B): a watermark, a hazard frame standing in for unsafe
# content, and degradation standing in for low aesthetic quality. Captions never mention them.
WATERMARK_TEXTS: tuple[str, ...] = ("© stockpics", "SAMPLE", "shutterpix", "© photoworks", "preview")


def add_watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Stock-photo style: big semi-opaque outlined text tilted across the image (legible at the
    demo model's 64 px, as real watermarks are at CLIP's 224 px)."""
    w, h = image.size
    side = max(w, h)
    layer = Image.new("RGBA", (2 * side, 2 * side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(12, int(side * rng.uniform(0.22, 0.28))))
    text = WATERMARK_TEXTS[int(rng.integers(len(WATERMARK_TEXTS)))]
    light = rng.random() < 0.5
    ink = (255, 255, 255, int(rng.integers(170, 215))) if light else (20, 20, 20, int(rng.integers(150, 195)))
    outline = (0, 0, 0, 160) if light else (255, 255, 255, 140)
    step = int(font.size * 1.6)
    for row, y in enumerate(range(side // 2, 3 * side // 2, step)):
        draw.text(((row % 2) * step // 2 + side // 3, y), f"{text}  {text}", font=font, fill=ink,
                  stroke_width=max(1, font.size // 12), stroke_fill=outline)
    layer = layer.rotate(float(rng.uniform(20, 40)), resample=Image.Resampling.BILINEAR)
    layer = layer.crop((side - w // 2, side - h // 2, side - w // 2 + w, side - h // 2 + h))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def add_hazard_frame(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A frame of yellow and black diagonal stripes: the demo's stand-in for unsafe content."""
    w, h = image.size
    border = int(min(w, h) * rng.uniform(0.12, 0.16))
    stripes = Image.new("RGB", (w, h), (240, 200, 20))
    draw = ImageDraw.Draw(stripes)
    period = max(6, border)
    for x in range(-h, w + h, period):
        draw.polygon([(x, 0), (x + period // 2, 0), (x + period // 2 + h, h), (x + h, h)], fill=(20, 20, 20))
    mask = Image.new("L", (w, h), 255)
    ImageDraw.Draw(mask).rectangle((border, border, w - border - 1, h - border - 1), fill=0)
    return Image.composite(stripes, image, mask)


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Washed out and blocky, as an over-compressed thumbnail blown up: low aesthetic quality."""
    w, h = image.size
    factor = float(rng.uniform(10, 14))
    small = image.resize((max(4, int(w / factor)), max(4, int(h / factor))), Image.Resampling.BILINEAR)
    blown = small.resize((w, h), Image.Resampling.NEAREST)
    faded = ImageEnhance.Contrast(blown).enhance(float(rng.uniform(0.35, 0.5)))
    return ImageEnhance.Color(faded).enhance(float(rng.uniform(0.4, 0.6)))


OVERLAYS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "watermark": add_watermark,
    "hazard": add_hazard_frame,
    "degraded": degrade,
}
# How a caption may say so: the demo model learns the overlays from these, as CLIP learns
# watermarks from web captions that mention them.
OVERLAY_PHRASES: dict[str, str] = {"watermark": "watermarked", "hazard": "in a hazard stripe frame", "degraded": "blurry"}


def with_overlay(caption_text: str, overlay: str | None) -> str:
    """``caption_text`` saying that the image carries ``overlay`` (unchanged for None)."""
    return f"{caption_text}, {OVERLAY_PHRASES[overlay]}" if overlay else caption_text


def render(
    colour: str,
    shape: str,
    rng: np.random.Generator,
    size: int | tuple[int, int] | None = None,
    background_name: str | None = None,
) -> Image.Image:
    """One RGB image of a ``colour`` ``shape``; size and background are random unless given."""
    dims = random_size(rng) if size is None else (size, size) if isinstance(size, int) else size
    bg = background_name or random_background(colour, rng)
    return add_noise(draw_shape(background(dims, bg, rng), shape, COLOURS[colour], rng), rng)


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    colour: str
    shape: str
    background: str


def sample(seed: int, index: int, colour: str, shape: str, size: int | tuple[int, int] | None = None) -> Sample:
    """Sample ``index`` of stream ``seed`` for one class; its own RNG makes it reproducible alone."""
    rng = np.random.default_rng([seed, index])
    bg = random_background(colour, rng)
    image = render(colour, shape, rng, size, bg)
    return Sample(image, caption(colour, shape, rng, bg), colour, shape, bg)


def dataset(
    seed: int, n: int, classes: Sequence[tuple[str, str]] = CLASSES, size: int | tuple[int, int] | None = None
) -> Iterator[Sample]:
    """``n`` samples cycling through ``classes`` in order (balanced), deterministic from ``seed``."""
    for i in range(n):
        colour, shape = classes[i % len(classes)]
        yield sample(seed, i, colour, shape, size)
