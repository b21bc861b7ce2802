"""Image download stage (img2dataset-style): fetch candidates' image URLs politely and safely,
decode and resize them, and record one IMAGES row per candidate.

Modules by role: ``address_guard`` (no private/loopback/metadata addresses), ``robots``
(robots.txt per origin), ``fetcher`` (async HTTP: deadlines, retries, limits, caps, opt-outs),
``resizer`` (Pillow decode/checks/resize/encode), ``downloader`` (the stage entry points).
"""

from spark_jobs.download.downloader import download_batch

__all__ = ["download_batch"]
