"""Small generated images and table rows for tests (Pillow, no files on disk)."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from infra.tables import IMAGES


def jpeg_bytes(rng: np.random.Generator, size: int = 48) -> bytes:
    """A small smooth-colour JPEG (decodes like a photo, compresses to a few KB)."""
    field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    field.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def images_table(n: int, seed: int = 0, failed: int = 0) -> pa.Table:
    """``n`` "ok" IMAGES rows with JPEG bytes, then ``failed`` "failed" rows without bytes."""
    rng = np.random.default_rng(seed)
    total = n + failed
    uids = [f"{i:016x}" for i in range(total)]
    columns = {
        "uid": uids,
        "url": [f"http://img.example/{u}.jpg" for u in uids],
        "warc_file": [f"w{i % 2}.warc.gz" for i in range(total)],
        "status": ["ok"] * n + ["failed"] * failed,
        "error": [None] * n + ["http_404"] * failed,
        "retryable": [False] * total,
        "attempts": [1] * total,
        "fetched_at": [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * total,
        "image": [jpeg_bytes(rng) for _ in range(n)] + [None] * failed,
        "width": [48] * n + [None] * failed,
        "height": [48] * n + [None] * failed,
    }
    rows = {f.name: columns.get(f.name, [None] * total) for f in IMAGES.schema}
    return pa.Table.from_pydict(rows, schema=IMAGES.schema)


def captions_for(table: pa.Table) -> dict[str, str]:
    words = "a photo of red blue dog cat house tree".split()
    uids = table["uid"].to_pylist()
    return {uid: " ".join(words[(i + k) % len(words)] for k in range(4)) for i, uid in enumerate(uids)}
