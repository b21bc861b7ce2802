"""`pairlake lineage UID`: where one sample came from and where it went.

Every table is read with a uid filter, so only the files and row groups that can hold the uid are
scanned; release versions are read from the lake (``<lake>/releases/<name>/v<k>/``): ``members.parquet``
as published and the shard parquet files as they are now (a removal may have rewritten them).
A removed uid is described from the audit trail (``removals`` + ``optout_requests``) and never with
a URL, even one a table should no longer hold.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow.dataset as pads

from infra.config import InputError
from infra import lake_layout
from infra.delta_store import Lake
from infra.lake_storage import Folder
from infra.tables import (
    BLOCKLIST_MATCHES, CANDIDATES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, IMAGES, KEPT_PAIRS, OPTOUT_REQUESTS,
    REMOVALS, TableSpec,
)
from spark_jobs.release import MEMBERS

_SOURCE = ("crawl_id", "warc_file", "record_offset", "page_url", "url", "caption", "fetch_date")
_DOWNLOAD = ("status", "error", "http_status", "attempts", "final_url", "fetched_at", "sha256",
             "width", "height", "original_width", "original_height", "original_bytes")
_URL_FIELDS = ("url", "page_url", "final_url")
_REQUEST = ("request_id", "status", "kind", "requester", "reason", "applied_at", "run_id")


class _Tables:
    """Reads rows of one uid at each table's current version, noting the versions it looked at."""

    def __init__(self, lake: Lake, uid: str) -> None:
        self.lake = lake
        self.by_uid = pads.field("uid") == uid
        self.versions: dict[str, dict[str, Any]] = {}

    def rows(self, spec: TableSpec, columns: list[str], where: pads.Expression | None = None) -> list[dict]:
        version = self.lake.version(spec)
        # The lineage of the version read, not of a commit that may have landed since.
        lineage = None if version is None else self.lake.lineage(spec, version)
        self.versions[spec.name] = {"version": version, "run_id": lineage.run_id if lineage else None}
        if version is None:
            return []
        where = self.by_uid if where is None else where
        return self.lake.read(spec, version=version, columns=columns, filter=where).to_pylist()


def _first(rows: list[dict]) -> dict | None:
    return rows[0] if rows else None


def _without_urls(row: dict | None) -> dict | None:
    return None if row is None else {k: v for k, v in row.items() if k not in _URL_FIELDS}


def _releases(lake: Lake, uid: str) -> list[dict]:
    """Every release version that published ``uid`` or whose shards hold it now."""
    by_uid = pads.field("uid") == uid
    found = []
    releases = lake.folder(lake_layout.RELEASES)
    for release in releases.folders():
        numbers = sorted(int(name[1:]) for name in releases.sub(release).folders() if name[1:].isdigit())
        for number in numbers:
            directory = lake.folder(lake_layout.release_version(release, number))
            published: set[tuple[str, str]] = set()
            if directory.exists(MEMBERS):
                hits = pads.dataset(directory.file(MEMBERS), format="parquet", filesystem=directory.fs).to_table(
                    columns=["shard", "key"], filter=by_uid)
                published = set(zip(hits["shard"].to_pylist(), hits["key"].to_pylist()))
            present = _in_shards(directory, by_uid)
            for shard, key in sorted(published | present):
                found.append({"release": release, "version": number,
                              "shard": shard, "key": key, "present": (shard, key) in present})
    return found


def _in_shards(directory: Folder, by_uid: pads.Expression) -> set[tuple[str, str]]:
    """(shard, key) of the uid in the shard parquet files there: one filtered scan over all of them."""
    names = directory.names("[0-9]*.parquet")
    if not names:
        return set()
    dataset = pads.dataset([directory.file(name) for name in names], format="parquet", filesystem=directory.fs)
    return {
        (tagged.fragment.path.rsplit("/", 1)[1].removesuffix(".parquet"), key)
        for tagged in dataset.scanner(columns=["key"], filter=by_uid).scan_batches()
        for key in tagged.record_batch.column("key").to_pylist()
    }


def describe(lake: Lake, uid: str) -> dict:
    """Everything the lake knows about ``uid``: source, download, scores, curation, releases and
    removal, plus the table versions read. Raises InputError if nothing holds the uid."""
    tables = _Tables(lake, uid)
    source = _first(tables.rows(CANDIDATES, list(_SOURCE)))
    download = _first(tables.rows(IMAGES, list(_DOWNLOAD)))
    clip = tables.rows(CLIP_SCORES, ["model_id", "similarity"])
    tags = [
        {**row, "extra": dict(row["extra"] or [])}  # a map column reads as (key, value) pairs
        for row in tables.rows(IMAGE_TAGS, ["model_id", "punsafe", "pwatermark", "aesthetic", "extra"])
    ]
    kept = _first(tables.rows(KEPT_PAIRS, ["language"]))
    blocklist = tables.rows(BLOCKLIST_MATCHES, ["source", "kind"])
    dedup = _first(tables.rows(DEDUP, ["reason", "exact_representative", "cluster", "cluster_size"]))
    curated = sorted(row["variant"] for row in tables.rows(CURATED, ["variant"]))
    removed = _first(tables.rows(REMOVALS, ["request_id", "matched_by", "removed_at", "run_id"]))
    if removed is not None:
        where = pads.field("request_id") == removed["request_id"]
        request = _first(tables.rows(OPTOUT_REQUESTS, list(_REQUEST), where))
        removed["request"] = None if request is None else {k: v for k, v in request.items() if k != "request_id"}
        # A removal that has not reached every table yet must not leak the URL it removed.
        source, download = _without_urls(source), _without_urls(download)
    releases = _releases(lake, uid)
    if not any((source, download, clip, tags, kept, blocklist, dedup, curated, removed, releases)):
        raise InputError(f"uid {uid!r} is unknown: no table, removal or release of the lake at {lake.root} holds it")
    return {
        "uid": uid, "source": source, "download": download, "clip": clip, "tags": tags, "kept": kept is not None,
        "language": None if kept is None else kept["language"],
        "blocklist_matches": blocklist, "dedup": dedup, "curated": curated, "releases": releases,
        "removed": removed, "table_versions": tables.versions,
    }


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _fields(row: dict, names: tuple[str, ...]) -> list[str]:
    """``name  value`` lines for the fields of ``row`` that are set."""
    return [f"  {name:<22}{_show(row[name])}" for name in names if row.get(name) is not None]


def _tag_line(row: dict) -> str:
    values = [(name, row[name]) for name in ("punsafe", "pwatermark", "aesthetic")] + sorted(row["extra"].items())
    return f"  {row['model_id']}  " + "  ".join(f"{name} {_show(v)}" for name, v in values if v is not None)


def format_lineage(info: dict) -> str:
    """``describe``'s answer as sectioned text; sections with nothing in them are left out."""
    sections: list[tuple[str, list[str]]] = []
    removed = info["removed"]
    if removed:  # first: for a removed uid it is the answer
        request = {f"request {k}": v for k, v in (removed["request"] or {}).items()}
        sections.append(("removed", _fields({**removed, **request}, (
            "request_id", "matched_by", "removed_at", "run_id", "request status", "request kind",
            "request requester", "request reason", "request applied_at", "request run_id"))))
    if info["source"]:
        sections.append(("source", _fields(info["source"], _SOURCE)))
    if info["download"]:
        sections.append(("download", _fields(info["download"], _DOWNLOAD)))
    sections.append(("clip", [f"  {row['model_id']}  similarity {_show(row['similarity'])}" for row in info["clip"]]))
    sections.append(("tags", [_tag_line(row) for row in info["tags"]]))
    if info["source"] or info["download"] or info["clip"]:  # "kept: no" only says something about a known pair
        language = f"  (caption language {info['language']})" if info["language"] else ""
        sections.append(("kept", [f"  {'yes' if info['kept'] else 'no'}{language}"]))
    sections.append(("blocklist matches",
                     [f"  {row['source']} ({row['kind']})" for row in info["blocklist_matches"]]))
    if info["dedup"]:
        sections.append(("dedup", _fields(info["dedup"], ("reason", "exact_representative", "cluster", "cluster_size"))))
    if info["curated"]:
        sections.append(("curated variants", [f"  {', '.join(info['curated'])}"]))
    sections.append(("releases", [
        f"  {row['release']} v{row['version']}  shard {row['shard']}  key {row['key']}  "
        + ("on disk" if row["present"] else "not on disk now")
        for row in info["releases"]
    ]))
    sections.append(("table versions", [
        f"  {name:<22}" + ("not written" if v["version"] is None else f"v{v['version']}  run {v['run_id'] or '-'}")
        for name, v in info["table_versions"].items()
    ]))
    return "\n".join([f"uid {info['uid']}"] + [f"{title}\n" + "\n".join(lines) for title, lines in sections if lines])
