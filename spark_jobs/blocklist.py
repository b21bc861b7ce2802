"""Hash-list blocklists, Re-LAION style: import lists of MD5/SHA1/SHA256 digests of image bytes or
of URLs, and match them against what the lake already stores.

Matching never visits a link: image digests were taken from the original bytes at download time
(``images.sha256/sha1/md5``) and URL digests are computed from the candidate's URL string (UTF-8,
exactly as extracted). URL lists also stop candidates before they are downloaded.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from infra.config import InputError
from infra.delta_store import Lake, Lineage
from infra.removal_fence import URL_DOMAIN_KIND, URL_PREFIX_KIND
from infra.spark import read_table
from infra.tables import BLOCKLIST


class BlocklistError(InputError):
    """A hash list that cannot be imported as a whole (nothing of it is imported)."""


@dataclass(frozen=True)
class HashKind:
    name: str  # "image-md5"
    target: str  # "image" (digest of the original bytes) or "url" (digest of the URL string)
    algorithm: str  # hashlib name: md5, sha1, sha256
    hex_length: int


KINDS: dict[str, HashKind] = {
    f"{target}-{algorithm}": HashKind(f"{target}-{algorithm}", target, algorithm, length)
    for target in ("image", "url")
    for algorithm, length in (("md5", 32), ("sha1", 40), ("sha256", 64))
}
# Opt-out removals add to this list (source REMOVAL_SOURCE); besides digests it holds URL rules, kind
# url-prefix (the digest column holds the prefix) and url-domain (the host; subdomains match too).
URL_RULE_KINDS = (URL_PREFIX_KIND, URL_DOMAIN_KIND)
_HEX = re.compile(r"[0-9a-f]+")
_SHOWN_ERRORS = 10


def hash_kind(name: str) -> HashKind:
    try:
        return KINDS[name]
    except KeyError:
        raise BlocklistError(f"unknown hash kind {name!r}; one of: {', '.join(KINDS)}") from None


def parse_hash_list(text: str, kind: HashKind) -> list[tuple[int, str]]:
    """(line number, lowercase digest) per entry of a plain-text or CSV hash list.

    Plain text: one digest per line; blank lines and ``#`` comments are skipped. CSV: a header row
    naming a column ``hash``, ``digest`` or the algorithm (``md5``...) selects that column. Every
    invalid line is reported (line numbers) in one error; a list with any is not imported.
    """
    lines = text.splitlines()
    column = _csv_column(lines[0], kind) if lines else None
    entries: list[tuple[int, str]] = []
    errors: list[str] = []
    start = 1 if column is not None else 0
    for number, line in enumerate(lines[start:], start=start + 1):
        if column is not None:
            fields = next(csv.reader([line]), [])
            value = fields[column].strip().lower() if column < len(fields) else ""
            if not line.strip():
                continue
        else:
            value = line.split("#", 1)[0].strip().lower()
            if not value:
                continue
        if len(value) != kind.hex_length or not _HEX.fullmatch(value):
            errors.append(f"line {number}: {value[:80]!r} is not a {kind.algorithm} digest ({kind.hex_length} hex digits)")
        else:
            entries.append((number, value))
    if errors:
        more = f" (and {len(errors) - _SHOWN_ERRORS} more)" if len(errors) > _SHOWN_ERRORS else ""
        raise BlocklistError(f"{len(errors)} invalid lines; nothing imported: " + "; ".join(errors[:_SHOWN_ERRORS]) + more)
    if not entries:
        raise BlocklistError("the list holds no digests; nothing imported")
    return entries


def _csv_column(header: str, kind: HashKind) -> int | None:
    """The digest column when the first line is a CSV header, None for a plain list."""
    names = [n.strip().lower() for n in next(csv.reader([header]), [])]
    for wanted in (kind.algorithm, "hash", "digest"):
        if wanted in names:
            return names.index(wanted)
    if len(names) > 1:
        raise BlocklistError(f"CSV header {header.strip()[:120]!r} names no column {kind.algorithm!r}, 'hash' or 'digest'")
    return None


def import_blocklist(
    lake: Lake, path: Path, source: str, kind_name: str, lineage: Lineage, list_date: date | None = None
) -> tuple[int, int]:
    """Import one hash list as ``source``'s rows of that kind, replacing an earlier import of it in
    one commit (a re-import is idempotent). Returns (Delta version, digests imported)."""
    kind = hash_kind(kind_name)
    if not source.strip():
        raise BlocklistError("a blocklist needs a source name")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BlocklistError(f"cannot read hash list {path}: {exc}") from None
    entries = parse_hash_list(text, kind)
    unique = {digest: number for number, digest in reversed(entries)}  # first line of each digest
    now = datetime.now(timezone.utc)
    rows = pa.table(
        {
            "source": [source] * len(unique),
            "kind": [kind.name] * len(unique),
            "target": [kind.target] * len(unique),
            "digest": list(unique),
            "line": list(unique.values()),
            "list_date": [list_date or now.date()] * len(unique),
            "imported_at": [now] * len(unique),
        }
    ).sort_by("digest")
    version = lake.replace_partitions(BLOCKLIST, rows, [source], lineage, also_match={"kind": kind.name})
    return version, len(unique)


def _digest_column(column: str, algorithm: str):
    return {"md5": F.md5, "sha1": F.sha1, "sha256": lambda c: F.sha2(c, 256)}[algorithm](F.col(column))


def url_matches(spark: SparkSession, lake: Lake, pairs: DataFrame, source: str | None = None) -> DataFrame:
    """(uid, source, kind) for each pair whose URL digest is on a URL list, or whose URL an opt-out
    prefix or domain rule covers; computed from the URL string, so no request is made. ``source``
    narrows to one list."""
    lists = read_table(spark, lake, BLOCKLIST, columns=["source", "kind", "digest"], where={"target": ["url"]})
    if source is not None:
        lists = lists.where(F.col("source") == source)
    digests = pairs.select(
        "uid", *[_digest_column("url", algorithm).alias(f"url-{algorithm}") for algorithm in ("md5", "sha1", "sha256")]
    )
    rules = F.broadcast(lists.where(F.col("kind").isin(*URL_RULE_KINDS)))
    host = F.lower(F.regexp_extract("url", r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#@:]*)", 1))
    covered = (
        ((F.col("kind") == "url-prefix") & F.col("url").startswith(F.col("digest")))
        | ((F.col("kind") == "url-domain") & ((host == F.col("digest")) | host.endswith(F.concat(F.lit("."), F.col("digest")))))
    )
    by_rule = pairs.select("uid", "url").join(rules, covered).select("uid", "source", "kind")
    return _matches(digests, lists, "url").unionByName(by_rule).distinct()


def image_matches(spark: SparkSession, lake: Lake, images: DataFrame) -> DataFrame:
    """(uid, source, kind) for each downloaded image whose stored digest is on an image list."""
    lists = read_table(spark, lake, BLOCKLIST, columns=["source", "kind", "digest"], where={"target": ["image"]})
    digests = images.where("status = 'ok'").select(
        "uid", *[F.col(algorithm).alias(f"image-{algorithm}") for algorithm in ("md5", "sha1", "sha256")]
    )
    return _matches(digests, lists, "image")


def _matches(digests: DataFrame, lists: DataFrame, target: str) -> DataFrame:
    long = digests.select(
        "uid",
        F.explode(
            F.array(*[F.struct(F.lit(k).alias("kind"), F.col(k).alias("digest")) for k in KINDS if k.startswith(target)])
        ).alias("d"),
    ).select("uid", "d.kind", "d.digest")
    # Lists are small next to the pairs; broadcasting them keeps the pairs where they are.
    return long.join(F.broadcast(lists), ["kind", "digest"]).select("uid", "source", "kind").distinct()
