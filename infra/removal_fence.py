"""The removal fence: no commit writes back what a removal took out while its writer was running.

A run reads its input (and the opt-out list) when it starts and commits minutes or hours later. A
removal that lands in between purges the lake, but the run may still hold a removed pair, or a new
pair of a removed URL or image, and would commit it after the purge. So every commit to a sample
table whose writer pinned an older ``removals`` version (``Lineage.removals_version``) is checked
against what removals hold now: the removed uids, and the opt-out list's URL digests, URL rules
(prefix, domain) and image digests. A hit refuses the whole commit (``RemovedWhileWriting``);
nothing of it lands and re-running the step reads the new list. Writers that saw the current
``removals`` version skip the check: their own reads already excluded everything it holds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from infra.tables import BLOCKLIST, IMAGES, REMOVALS, SAMPLE_TABLES, TableSpec

# The blocklist source removals add to (spark_jobs.blocklist.REMOVAL_SOURCE) and its URL rules.
REMOVAL_SOURCE = "optout"
URL_PREFIX_KIND, URL_DOMAIN_KIND = "url-prefix", "url-domain"
# Lineage.removals_version of a writer that never pinned one: always checked.
UNPINNED = -2
_SAMPLE_NAMES = {spec.name for spec in SAMPLE_TABLES}


class RemovedWhileWriting(RuntimeError):
    """A commit would write back rows that a removal took out while its writer ran."""


def url_rule_mask(urls: pa.ChunkedArray | pa.Array, kind: str, value: str) -> pa.ChunkedArray | pa.Array:
    """Which URLs a prefix rule or a domain rule (the host or any subdomain; any scheme, userinfo
    or port) covers; null URLs are not covered."""
    if kind == URL_PREFIX_KIND:
        return pc.fill_null(pc.starts_with(urls, value), False)
    if kind != URL_DOMAIN_KIND:
        raise ValueError(f"not a URL rule kind: {kind!r}")
    pattern = r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*@)?([^/?#@:]*\.)?" + re.escape(value) + r"(:[0-9]*)?([/?#]|$)"
    return pc.fill_null(pc.match_substring_regex(urls, pattern, ignore_case=True), False)


def pinned_version(lake) -> int:
    """The ``removals`` version a writer starting now reads (-1 before the first removal)."""
    version = lake.version(REMOVALS)
    return -1 if version is None else version


def check_commit(lake, spec: TableSpec, rows: Iterable[pa.Table | pa.RecordBatch], pinned: int) -> None:
    """Refuse ``rows`` (a commit's rows, streamed in pieces) for ``spec`` if a removal that landed
    after ``pinned`` covers any of them. Only one piece is held at a time."""
    if spec.name not in _SAMPLE_NAMES or pinned_version(lake) == pinned:
        return
    removed = lake.read(REMOVALS, columns=["uid"])["uid"].combine_chunks()
    listed = lake.read(BLOCKLIST, columns=["kind", "digest"], partitions=[REMOVAL_SOURCE])
    by_kind: dict[str, list[str]] = {}
    for kind, digest in zip(listed["kind"].to_pylist(), listed["digest"].to_pylist()):
        by_kind.setdefault(kind, []).append(digest)
    count = sum(_removed_rows(spec, piece, removed, by_kind) for piece in rows)
    if count:
        raise RemovedWhileWriting(
            f"commit to {spec.name} refused: {count:,} of its rows were removed by an opt-out while this run was "
            "writing; nothing was committed. Re-run the step: it reads the updated opt-out list")


def _removed_rows(spec: TableSpec, rows: pa.Table | pa.RecordBatch, removed: pa.Array,
                  by_kind: dict[str, list[str]]) -> int:
    if not rows.num_rows:
        return 0
    hit = pc.is_in(rows["uid"], removed)
    for column in ("url", "final_url"):
        if column not in rows.column_names:
            continue
        urls = rows[column]
        digests = pa.array([hashlib.sha256(u.encode()).hexdigest() if u else None for u in urls.to_pylist()],
                           pa.string())
        hit = pc.or_(hit, pc.fill_null(pc.is_in(digests, pa.array(by_kind.get("url-sha256", []), pa.string())), False))
        for kind in (URL_PREFIX_KIND, URL_DOMAIN_KIND):
            for value in by_kind.get(kind, []):
                hit = pc.or_(hit, url_rule_mask(urls, kind, value))
    if spec.name == IMAGES.name:  # stored bytes of a removed image (rows without bytes are the record)
        stored = pc.equal(rows["status"], "ok")
        for algorithm in ("sha256", "md5"):
            known = pa.array(by_kind.get(f"image-{algorithm}", []), pa.string())
            hit = pc.or_(hit, pc.and_(stored, pc.fill_null(pc.is_in(rows[algorithm], known), False)))
    return pc.sum(pc.cast(hit, pa.int64())).as_py() or 0
