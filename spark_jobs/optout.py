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
from collections import Counter
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TypeGuard
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from infra.config import InputError
from infra.delta_store import Lake, Lineage
from infra.lake_storage import Folder
from infra.purge import PurgeResult, purge_uids
from infra.removal_fence import REMOVAL_SOURCE, url_rule_mask
from infra.tables import BLOCKLIST, CANDIDATES, IMAGES, OPTOUT_REQUESTS, REMOVALS, SAMPLE_TABLES, TableSpec
from spark_jobs.blocklist import URL_RULE_KINDS

KINDS = ("url", "url_prefix", "domain", "sha256", "md5", "image")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HEX_DIGITS = {"sha256": 64, "md5": 32}
_FIELDS = {"request_id", "requester", "reason", "kind", "value", "image", "min_similarity"}
# Caps on what a requester controls: the file, its free text, its value and its example image.
MAX_REQUEST_BYTES = 64 * 1024
MAX_EXAMPLE_IMAGE_BYTES = 20_000_000
_MAX_CHARS = {"requester": 200, "reason": 2000, "value": 2048}
# The blocklist kind that stops later crawls, per rule-like request kind.
_RULE_KIND = dict(zip(("url_prefix", "domain"), URL_RULE_KINDS))


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


def check_request_id(request_id: object) -> str:
    """``request_id`` if it is a safe name (it becomes a file name), else RequestError."""
    if not isinstance(request_id, str) or not _ID.match(request_id):
        raise RequestError(f"request_id {str(request_id)[:120]!r} must be 1-100 letters, digits, '.', '_' or '-'"
                           " (starting with a letter or digit)")
    return request_id


def validate(data: object, request_id: str, inbox: Folder | None = None) -> OptOutRequest:
    """The request in ``data`` (a parsed JSON object), or RequestError naming what is wrong; an image
    request's example is read from ``inbox``."""
    if not isinstance(data, dict):
        raise RequestError("a request must be a JSON object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise RequestError(f"unknown field {sorted(unknown)[0]!r:.60} (known: {', '.join(sorted(_FIELDS))})")
    request_id = check_request_id(data.get("request_id") or request_id)
    for name in ("requester", "reason"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise RequestError(f"the request needs a non-empty {name!r}")
    for name, cap in _MAX_CHARS.items():
        if isinstance(data.get(name), str) and len(data[name]) > cap:
            raise RequestError(f"{name} is {len(data[name]):,} characters; at most {cap:,}")
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
            if kind == "url_prefix" and not urlsplit(value).path.startswith("/"):
                # "http://1" would match every host starting with 1: a prefix must end the host name.
                raise RequestError(f"url_prefix must name a whole host and the start of a path, e.g. "
                                   f"https://example.com/photos/, got {value[:200]!r}")
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


def is_plain_name(name: object) -> TypeGuard[str]:
    """A file name with no folder in it, not ``..`` and not hidden: all a request may name."""
    return isinstance(name, str) and Path(name).name == name and not name.startswith(".")


def _read_example(name: object, inbox: Folder | None) -> bytes:
    if inbox is None or not is_plain_name(name):
        raise RequestError("'image' must be the name of a file next to the request in the inbox")
    if not inbox.exists(name):
        raise RequestError(f"the example image {name!r} is not in the inbox")
    if inbox.size(name) > MAX_EXAMPLE_IMAGE_BYTES:
        raise RequestError(f"the example image {name!r} is larger than {MAX_EXAMPLE_IMAGE_BYTES:,} bytes")
    data = inbox.read_bytes(name)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RequestError(f"the example image {name!r} cannot be decoded: {exc}") from None
    return data


def read_request(inbox: Folder, name: str) -> bytes:
    """The bytes of request file ``name``, read no further than one byte past MAX_REQUEST_BYTES: a
    file larger than any request is never read whole (``parse_request_file`` refuses it)."""
    with inbox.open(name) as fh:
        return fh.read(MAX_REQUEST_BYTES + 1)


def parse_request_file(inbox: Folder, name: str) -> OptOutRequest:
    """Read and validate the request file ``name`` of the inbox (or of the held requests)."""
    raw = read_request(inbox, name)
    if len(raw) > MAX_REQUEST_BYTES:
        raise RequestError(f"the request file is {inbox.size(name):,} bytes; "
                           f"a request is at most {MAX_REQUEST_BYTES:,}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise RequestError(f"not a JSON request: {str(exc)[:200] or type(exc).__name__}") from None
    return validate(data, Path(name).stem, inbox)


# -- matching ------------------------------------------------------------------------------------

def _url_mask(urls: pa.ChunkedArray, request: OptOutRequest) -> pa.ChunkedArray:
    if request.kind == "url":
        return pc.fill_null(pc.equal(urls, request.value), False)
    return url_rule_mask(urls, _RULE_KIND[request.kind], request.value)


@dataclass
class Matches:
    uids: dict[str, str] = field(default_factory=dict)  # uid -> how it matched
    partitions: dict[str, str] = field(default_factory=dict)  # uid -> warc_file
    urls: set[str] = field(default_factory=set)  # every URL of a matched pair (candidate and final)
    sha256: set[str] = field(default_factory=set)  # every image digest of a matched pair
    lake_pairs: int = 0  # pairs in the lake (candidates), the measure of how broad a request is
    hosts: Counter[str] = field(default_factory=Counter)  # matched pairs per image host

    def add(self, uids: list[str], how: str) -> None:
        for uid in uids:
            self.uids.setdefault(uid, how)


_CANDIDATE_COLUMNS = ["uid", "url", "warc_file"]
_IMAGE_COLUMNS = ["uid", "url", "final_url", "warc_file", "sha256", "md5"]


def _scan(lake: Lake, spec: TableSpec, columns: list[str], on: str, test: Callable[[pa.Array], pa.Array]) -> pa.Table:
    """The rows of ``spec`` (only ``columns``) whose column ``on`` passes ``test``, read a batch at a
    time: what is held is one batch and the matches, whatever the size of the lake."""
    schema = pa.schema([spec.schema.field(name) for name in columns])
    read = list(dict.fromkeys([*columns, on]))
    hits = [batch.filter(test(batch.column(on))).select(columns) for batch in lake.batches(spec, read)]
    return pa.Table.from_batches([h for h in hits if h.num_rows], schema=schema).cast(schema)


def _among(values: Iterable[str]) -> Callable[[pa.Array], pa.Array]:
    chosen = pa.array(sorted(values), pa.string())
    return lambda column: pc.fill_null(pc.is_in(column, chosen), False)


def find_matches(lake: Lake, request: OptOutRequest, similar: dict[str, float] | None = None) -> Matches:
    """Every uid the request names, then every uid sharing a matched pair's URL or image bytes.

    ``similar`` (image requests): uids whose stored embedding is close enough to the example's.
    The tables are scanned a batch at a time (uids, URLs and digests only), never held whole.
    """
    found = Matches()
    if request.kind in ("url", "url_prefix", "domain"):
        named = _scan(lake, CANDIDATES, ["uid"], "url", lambda urls: _url_mask(urls, request))
        found.add(named["uid"].to_pylist(), request.kind)
        named = _scan(lake, IMAGES, ["uid"], "final_url", lambda urls: _url_mask(urls, request))
        found.add(named["uid"].to_pylist(), f"final_{request.kind}")
    elif request.kind in ("sha256", "md5"):
        named = _scan(lake, IMAGES, ["uid"], request.kind,
                      lambda digests: pc.fill_null(pc.equal(digests, request.value), False))
        found.add(named["uid"].to_pylist(), request.kind)
    else:
        digest = hashlib.sha256(request.image_bytes).hexdigest()
        named = _scan(lake, IMAGES, ["uid"], "sha256",
                      lambda digests: pc.fill_null(pc.equal(digests, digest), False))
        found.add(named["uid"].to_pylist(), "image_bytes")
        found.add(sorted(similar or {}), "image_similarity")
    # Close over copies: the same URL under another caption, the same bytes under another URL.
    while True:
        chosen = _among(found.uids)
        mine_c = _scan(lake, CANDIDATES, _CANDIDATE_COLUMNS, "uid", chosen)
        mine_i = _scan(lake, IMAGES, _IMAGE_COLUMNS, "uid", chosen)
        found.urls = {u for u in mine_c["url"].to_pylist() + mine_i["final_url"].to_pylist() if u}
        found.sha256 = {d for d in mine_i["sha256"].to_pylist() if d}
        before = len(found.uids)
        same_url, same_bytes = _among(found.urls), _among(found.sha256)
        found.add(_scan(lake, CANDIDATES, ["uid"], "url", same_url)["uid"].to_pylist(), "same_url")
        found.add(_scan(lake, IMAGES, ["uid"], "sha256", same_bytes)["uid"].to_pylist(), "same_bytes")
        if len(found.uids) == before:
            break
    # The last round read the rows of exactly the uids found.
    for rows in (mine_c, mine_i):
        found.partitions.update(zip(rows["uid"].to_pylist(), rows["warc_file"].to_pylist()))
    dataset = lake.dataset(CANDIDATES)
    found.lake_pairs = dataset.count_rows() if dataset is not None else 0
    found.hosts = Counter(urlsplit(u).hostname or "?" for u in mine_c["url"].to_pylist())
    return found


# -- guards against over-broad requests ----------------------------------------------------------

@lru_cache(maxsize=1)
def _public_suffixes():
    from publicsuffixlist import PublicSuffixList  # the list ships inside the package: no download

    return PublicSuffixList()


def public_suffix_named(request: OptOutRequest) -> str | None:
    """The host a domain or prefix request names, if it is a public suffix (com, co.uk, github.io)."""
    if request.kind not in ("domain", "url_prefix"):
        return None
    host = request.value if request.kind == "domain" else (urlsplit(request.value).hostname or "")
    if not host or re.fullmatch(r"[0-9.]+|\[?[0-9a-f:]+\]?", host):  # an IP address is no suffix
        return None
    return host if _public_suffixes().is_public(host) else None


def preview(found: Matches) -> dict:
    """What a request would remove, for the audit row and `pairlake optout preview` (no URLs)."""
    by_how = Counter(found.uids.values())
    return {
        "matched": len(found.uids), "lake_pairs": found.lake_pairs,
        "fraction": round(len(found.uids) / found.lake_pairs, 6) if found.lake_pairs else 0.0,
        "matched_by": dict(sorted(by_how.items())),
        "hosts": dict(found.hosts.most_common(20)),
        "uids": sorted(found.uids)[:20],
    }


def hold_reason(request: OptOutRequest, found: Matches, max_fraction: float, max_samples: int) -> str | None:
    """Why a request must wait for a person's confirmation, or None when it may be applied at once."""
    suffix = public_suffix_named(request)
    if suffix:
        return f"{request.kind} names the public suffix {suffix!r}: every site under it would go"
    n = len(found.uids)
    if n > max_samples:
        return f"matches {n:,} pairs, more than optout.max_auto_samples ({max_samples:,})"
    if found.lake_pairs and n > max_fraction * found.lake_pairs:
        return (f"matches {n:,} of {found.lake_pairs:,} pairs ({n / found.lake_pairs:.2%}), more than "
                f"optout.max_auto_fraction ({max_fraction:.2%})")
    return None


# -- removal -------------------------------------------------------------------------------------

@dataclass
class RemovalOutcome:
    request_id: str
    status: str  # received, needs_confirmation, applied or rejected
    matched: int = 0
    rows_deleted: dict[str, int] = field(default_factory=dict)
    purges: list[PurgeResult] = field(default_factory=list)
    index_vectors_removed: dict[str, int] = field(default_factory=dict)
    shards_rewritten: list[str] = field(default_factory=list)
    rejection: str = ""
    hold_reason: str = ""  # needs_confirmation: why
    preview: dict = field(default_factory=dict)
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
    elif request.kind in _RULE_KIND:
        entries.append((_RULE_KIND[request.kind], "url", request.value))
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
                   received_at: dt.datetime, lineage: Lineage, preview_json: dict | None = None,
                   confirmed_by: str | None = None) -> int:
    """Append one audit row for a step of the request (the audit is append-only); returns the version."""
    now = dt.datetime.now(dt.timezone.utc)
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
        "applied_at": now if outcome.status == "applied" else None,
        "run_id": lineage.run_id, "recorded_at": now,
        "preview": json.dumps(preview_json, sort_keys=True) if preview_json is not None else None,
        "hold_reason": outcome.hold_reason or None, "confirmed_by": confirmed_by,
    }
    return lake.append(OPTOUT_REQUESTS, pa.Table.from_pylist([row], schema=OPTOUT_REQUESTS.schema), lineage)


def _row_order(row: dict) -> tuple:
    return (row["recorded_at"] or row["applied_at"] or row["received_at"], row["status"] != "received")


def request_rows(lake: Lake) -> dict[str, list[dict]]:
    """Every audit row per request id, oldest first."""
    history: dict[str, list[dict]] = {}
    for row in sorted(lake.read(OPTOUT_REQUESTS).to_pylist(), key=_row_order):
        history.setdefault(row["request_id"], []).append(row)
    return history


def latest_status(lake: Lake, request_id: str) -> str | None:
    """The status of a request id now (its newest audit row), or None if it was never seen."""
    rows = lake.read(OPTOUT_REQUESTS, filter=pc.field("request_id") == request_id).to_pylist()
    return max(rows, key=_row_order)["status"] if rows else None


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
