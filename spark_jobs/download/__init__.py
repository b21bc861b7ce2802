"""Image download stage (img2dataset-style): fetch candidates' image URLs politely and safely,
decode and resize them, and record one IMAGES row per candidate.

Modules by role: ``address_guard`` (no private/loopback/metadata addresses unless allowed by
host:port), ``hosts`` (per-host slots and circuit breaker), ``origin_policies`` (the opt-out and
robots files of an origin, fetched once per batch; documents every download-time signal and our
user agent), ``robots`` (robots.txt syntax, also ai.txt's), ``tdmrep`` (W3C TDMRep), ``fetcher``
(async HTTP: deadlines, retries, limits, caps, header opt-outs), ``decode_budget`` (memory of
concurrent decodes), ``resizer`` (Pillow decode/checks/resize/encode), ``downloader`` (the stage
entry point).
"""

from spark_jobs.download.downloader import download_batch

__all__ = ["download_batch"]
