"""A real HTTP server on 127.0.0.1 that serves a crawl's images, with the trouble real hosts have.

The demo and the tests point the downloader at it. A *site* is a mapping of URL path to
``Resource``; ``save_site``/``load_site`` keep one on disk (``manifest.json`` + files) so that the
sample-crawl generator can write it and ``python -m infra.image_server SITE_DIR`` can serve it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Resource:
    """What the server answers at one path."""

    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (slow hosts, timeouts)
    redirect_to: str | None = None  # answer 302 with this Location


def save_site(resources: dict[str, Resource], site_dir: str | Path) -> None:
    """Write ``resources`` as ``site_dir/manifest.json`` plus one body file per resource."""
    site = Path(site_dir)
    (site / "files").mkdir(parents=True, exist_ok=True)
    manifest = {}
    for i, (path, res) in enumerate(sorted(resources.items())):
        body_file = f"files/{i:06d}.bin"
        (site / body_file).write_bytes(res.body)
        manifest[path] = {
            "file": body_file,
            "content_type": res.content_type,
            "status": res.status,
            "headers": res.headers,
            "delay_s": res.delay_s,
            "redirect_to": res.redirect_to,
        }
    (site / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def load_site(site_dir: str | Path) -> dict[str, Resource]:
    site = Path(site_dir)
    manifest = json.loads((site / "manifest.json").read_text())
    return {
        path: Resource(
            body=(site / entry["file"]).read_bytes(),
            content_type=entry["content_type"],
            status=entry["status"],
            headers=dict(entry["headers"]),
            delay_s=entry["delay_s"],
            redirect_to=entry["redirect_to"],
        )
        for path, entry in manifest.items()
    }
