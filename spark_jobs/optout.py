"""Opt-out requests: parse and validate one, find every sample it names, remove them everywhere.

A request is a JSON file in the inbox (``pairlake optout submit`` writes one)::

    {"request_id": "req-0001", "requester": "ticket 4711", "reason": "site owner",
     "kind": "url" | "url_prefix" | "domain" | "sha256" | "md5" | "image",
     "value": "<the URL, prefix, domain or hex digest>",        # not for kind image
     "image": "req-0001.jpg", "min_similarity": 0.97}           # kind image: a file in the inbox

Removal covers every copy of the removed bytes: a pair matched by URL or hash takes with it every
other pair whose image has the same sha256, and every pair of the same URL. Exact URLs, hashes and
example images are recorded as sha256 digests only, so the audit trail holds no removed link.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from infra.config import InputError
from infra.delta_store import Lake, Lineage
from infra.purge import PurgeResult, purge_uids
from infra.tables import BLOCKLIST, CANDIDATES, IMAGES, OPTOUT_REQUESTS, REMOVALS, SAMPLE_TABLES
from spark_jobs.blocklist import REMOVAL_SOURCE

KINDS = ("url", "url_prefix", "domain", "sha256", "md5", "image")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HEX_DIGITS = {"sha256": 64, "md5": 32}
_FIELDS = {"request_id", "requester", "reason", "kind", "value", "image", "min_similarity"}


class RequestError(InputError):
    """A malformed opt-out request: it is rejected as a whole, nothing of it applied."""


@dataclass(frozen=True)
class OptOutRequest:
    request_id: str
    requester: str
    reason: str
    kind: str
    value: str = ""  # URL, prefix, domain or lowercase hex digest
    image_bytes: bytes = b""  # kind image: the example image
    min_similarity: float | None = None

    @property
    def target_sha256(self) -> str:
        """What the audit keeps of the target: a digest, never the URL or the image itself."""
        return hashlib.sha256(self.image_bytes if self.kind == "image" else self.value.encode()).hexdigest()

    @property
    def cleartext_target(self) -> str | None:
        """Prefixes and domains are rules for later crawls, kept as given; nothing else is."""
        return self.value if self.kind in ("url_prefix", "domain") else None


def _check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestError(f"{what} must be an http(s) URL with a host, got {value[:200]!r}")
    return value


def validate(data: object, request_id: str, inbox: Path | None = None) -> OptOutRequest:
    """The request in ``data`` (a parsed JSON object), or RequestError naming what is wrong."""
    if not isinstance(data, dict):
        raise RequestError("a request must be a JSON object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise RequestError(f"unknown field {sorted(unknown)[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    request_id = str(data.get("request_id") or request_id)
    if not _ID.match(request_id):
        raise RequestError(f"request_id {request_id[:120]!r} must be 1-100 letters, digits, '.', '_' or '-'")
    for name in ("requester", "reason"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise RequestError(f"the request needs a non-empty {name!r}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise RequestError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    value = data.get("value", "")
    if not isinstance(value, str):
        raise RequestError("value must be a string")
    value = value.strip()
    image_bytes = b""
    min_similarity = data.get("min_similarity")
    if kind == "image":
        if value or not data.get("image"):
            raise RequestError("an image request names its example file in 'image' (and no 'value')")
        image_bytes = _read_example(data["image"], inbox)
        if min_similarity is not None and (
            isinstance(min_similarity, bool) or not isinstance(min_similarity, (int, float)) or not 0 < min_similarity <= 1
        ):
            raise RequestError(f"min_similarity must be a cosine in (0, 1], got {min_similarity!r}")
    else:
        if data.get("image") or min_similarity is not None:
            raise RequestError("'image' and 'min_similarity' belong to image requests only")
        if not value:
            raise RequestError(f"a {kind} request needs a 'value'")
        if kind in ("url", "url_prefix"):
            _check_url(value, kind)
        elif kind == "domain":
            value = value.lower().rstrip(".")
            if not _HOST.match(value):
                raise RequestError(f"domain {value[:200]!r} is not a host name")
        else:
            value = value.lower()
            if len(value) != _HEX_DIGITS[kind] or not re.fullmatch(r"[0-9a-f]+", value):
                raise RequestError(f"{kind} must be {_HEX_DIGITS[kind]} hex digits, got {value[:80]!r}")
    return OptOutRequest(request_id, data["requester"].strip(), data["reason"].strip(), kind, value, image_bytes,
                         None if min_similarity is None else float(min_similarity))


def _read_example(name: object, inbox: Path | None) -> bytes:
    if not isinstance(name, str) or inbox is None or Path(name).name != name:
        raise RequestError("'image' must be the name of a file next to the request in the inbox")
    path = inbox / name
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except FileNotFoundError:
        raise RequestError(f"the example image {name!r} is not in the inbox") from None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RequestError(f"the example image {name!r} cannot be decoded: {exc}") from None
    return data


def parse_request_file(path: Path) -> OptOutRequest:
    """Read and validate one request file of the inbox."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"not a JSON request: {exc}") from None
    return validate(data, path.stem, path.parent)


# -- matching ------------------------------------------------------------------------------------

def _url_mask(urls: pa.ChunkedArray, request: OptOutRequest) -> pa.ChunkedArray:
    if request.kind == "url":
        return pc.fill_null(pc.equal(urls, request.value), False)
    if request.kind == "url_prefix":
        return pc.fill_null(pc.starts_with(urls, request.value), False)
    # The host itself or any subdomain, any scheme, userinfo or port.
    pattern = r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*@)?([^/?#@:]*\.)?" + re.escape(request.value) + r"(:[0-9]*)?([/?#]|$)"
    return pc.fill_null(pc.match_substring_regex(urls, pattern, ignore_case=True), False)


@dataclass
class Matches:
    uids: dict[str, str] = field(default_factory=dict)  # uid -> how it matched
    partitions: dict[str, str] = field(default_factory=dict)  # uid -> warc_file
    urls: set[str] = field(default_factory=set)  # every URL of a matched pair (candidate and final)
    sha256: set[str] = field(default_factory=set)  # every image digest of a matched pair

    def add(self, uids: list[str], how: str) -> None:
        for uid in uids:
            self.uids.setdefault(uid, how)


def find_matches(lake: Lake, request: OptOutRequest, similar: dict[str, float] | None = None) -> Matches:
    """Every uid the request names, then every uid sharing a matched pair's URL or image bytes.

    ``similar`` (image requests): uids whose stored embedding is close enough to the example's.
    """
    candidates = lake.read(CANDIDATES, columns=["uid", "url", "warc_file"])
    images = lake.read(IMAGES, columns=["uid", "url", "final_url", "warc_file", "sha256", "md5"])
    found = Matches()
    if request.kind in ("url", "url_prefix", "domain"):
        found.add(candidates.filter(_url_mask(candidates["url"], request))["uid"].to_pylist(), request.kind)
        found.add(images.filter(_url_mask(images["final_url"], request))["uid"].to_pylist(), f"final_{request.kind}")
    elif request.kind in ("sha256", "md5"):
        found.add(images.filter(pc.equal(images[request.kind], request.value))["uid"].to_pylist(), request.kind)
    else:
        digest = hashlib.sha256(request.image_bytes).hexdigest()
        found.add(images.filter(pc.equal(images["sha256"], digest))["uid"].to_pylist(), "image_bytes")
        found.add(sorted(similar or {}), "image_similarity")
    # Close over copies: the same URL under another caption, the same bytes under another URL.
    while True:
        chosen = pa.array(sorted(found.uids), pa.string())
        mine_c = candidates.filter(pc.is_in(candidates["uid"], chosen))
        mine_i = images.filter(pc.is_in(images["uid"], chosen))
        found.urls = {u for u in mine_c["url"].to_pylist() + mine_i["final_url"].to_pylist() if u}
        found.sha256 = {d for d in mine_i["sha256"].to_pylist() if d}
        before = len(found.uids)
        found.add(candidates.filter(pc.is_in(candidates["url"], pa.array(sorted(found.urls), pa.string())))["uid"].to_pylist(), "same_url")
        found.add(images.filter(pc.is_in(images["sha256"], pa.array(sorted(found.sha256), pa.string())))["uid"].to_pylist(), "same_bytes")
        if len(found.uids) == before:
            break
    for table in (candidates, images):
        rows = table.filter(pc.is_in(table["uid"], pa.array(sorted(found.uids), pa.string())))
        found.partitions.update(zip(rows["uid"].to_pylist(), rows["warc_file"].to_pylist()))
    return found


# -- removal -------------------------------------------------------------------------------------

@dataclass
class RemovalOutcome:
    request_id: str
    status: str  # applied or rejected
    matched: int = 0
    rows_deleted: dict[str, int] = field(default_factory=dict)
    purges: list[PurgeResult] = field(default_factory=list)
    index_vectors_removed: dict[str, int] = field(default_factory=dict)
    shards_rewritten: list[str] = field(default_factory=list)
    rejection: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # per phase


def purge_tables(lake: Lake, found: Matches, lineage: Lineage) -> list[PurgeResult]:
    """Delete the matched uids from every sample table (one commit each) and purge the history."""
    uids = sorted(found.uids)
    # Narrow the rewrite to the partitions holding them, unless a uid's partition is unknown (a
    # retry after candidates and images were already purged): then every file is considered.
    known = set(found.partitions) >= set(uids)
    partitions = sorted(set(found.partitions.values())) if known else []
    return [
        purge_uids(lake, spec, uids, lineage, partitions if spec.partition_by == ("warc_file",) else ())
        for spec in SAMPLE_TABLES
    ]


def extend_removal_blocklist(lake: Lake, request: OptOutRequest, found: Matches, lineage: Lineage) -> int:
    """Add the removed URLs and image digests (and a prefix or domain rule) to the ``optout`` list
    that later crawls are filtered against before download; returns the list's size."""
    now = dt.datetime.now(dt.timezone.utc)
    entries = [("url-sha256", "url", hashlib.sha256(u.encode()).hexdigest()) for u in sorted(found.urls)]
    entries += [("image-sha256", "image", d) for d in sorted(found.sha256)]
    if request.kind == "url":
        entries.append(("url-sha256", "url", request.target_sha256))
    elif request.kind in ("sha256", "md5"):
        entries.append((f"image-{request.kind}", "image", request.value))
    elif request.kind in ("url_prefix", "domain"):
        entries.append((f"url-{request.kind.replace('_', '-')}", "url", request.value))
    existing = lake.read(BLOCKLIST, partitions=[REMOVAL_SOURCE])
    known = {(k, d) for k, d in zip(existing["kind"].to_pylist(), existing["digest"].to_pylist())}
    fresh = sorted({e for e in entries if (e[0], e[2]) not in known})
    rows = pa.table(
        {
            "source": [REMOVAL_SOURCE] * len(fresh), "kind": [e[0] for e in fresh], "target": [e[1] for e in fresh],
            "digest": [e[2] for e in fresh], "line": [0] * len(fresh), "list_date": [now.date()] * len(fresh),
            "imported_at": [now] * len(fresh),
        },
        schema=BLOCKLIST.schema,
    )
    if fresh:
        lake.replace_partitions(BLOCKLIST, pa.concat_tables([existing, rows]), [REMOVAL_SOURCE], lineage)
    return existing.num_rows + len(fresh)


def record_request(lake: Lake, request: OptOutRequest | None, request_id: str, file_name: str, outcome: RemovalOutcome,
                   received_at: dt.datetime, lineage: Lineage) -> int:
    """Upsert the request's audit row (one row per request id); returns the table version."""
    row = {
        "request_id": request_id, "status": outcome.status,
        "kind": request.kind if request else None,
        "target": request.cleartext_target if request else None,
        "target_sha256": request.target_sha256 if request else None,
        "requester": request.requester if request else None,
        "reason": request.reason if request else None,
        "rejection": outcome.rejection or None,
        "matched": outcome.matched, "rows_deleted": json.dumps(outcome.rows_deleted, sort_keys=True),
        "shards_rewritten": len(outcome.shards_rewritten), "file_name": file_name,
        "received_at": received_at,
        "applied_at": dt.datetime.now(dt.timezone.utc) if outcome.status == "applied" else None,
        "run_id": lineage.run_id,
    }
    rows = lake.read(OPTOUT_REQUESTS)
    rows = rows.filter(pc.not_equal(rows["request_id"], request_id))
    rows = pa.concat_tables([rows, pa.Table.from_pylist([row], schema=OPTOUT_REQUESTS.schema)]).sort_by("request_id")
    return lake.overwrite(OPTOUT_REQUESTS, rows, lineage)


def record_removals(lake: Lake, request: OptOutRequest, found: Matches, lineage: Lineage) -> None:
    """Record the matched uids before anything is deleted, so that a retry finds them again."""
    now = dt.datetime.now(dt.timezone.utc)
    uids = sorted(found.uids)
    rows = pa.table(
        {"uid": uids, "request_id": [request.request_id] * len(uids), "matched_by": [found.uids[u] for u in uids],
         "removed_at": [now] * len(uids), "run_id": [lineage.run_id] * len(uids)},
        schema=REMOVALS.schema,
    )
    known = lake.read(REMOVALS, columns=["uid"], filter=pc.field("uid").isin(pa.array(uids, pa.string())))
    fresh = rows.filter(pc.invert(pc.is_in(rows["uid"], known["uid"].combine_chunks())))
    if fresh.num_rows:  # a retried request appends only what it had not recorded
        lake.append(REMOVALS, fresh, lineage)


def recorded_uids(lake: Lake, request_id: str) -> dict[str, str]:
    """uid -> matched_by already recorded for a request (a retry of a run that died halfway)."""
    rows = lake.read(REMOVALS, columns=["uid", "matched_by"], filter=pc.field("request_id") == request_id)
    return dict(zip(rows["uid"].to_pylist(), rows["matched_by"].to_pylist()))
