"""Releases: named, versioned exports of a curated variant, and Re-LAION-style re-releases.

``<lake>/releases/<name>/v<k>/`` holds the shards (``00000.tar`` + ``.parquet`` + ``_stats.json``),
``manifest.json`` (what the version pinned, its rules, counts and checksums, as published),
``members.parquet`` (shard, key, uid of every sample, as published) and, from v2 on,
``diff.json`` + ``diff.parquet``: what changed since the previous version.

A *snapshot* exports the curated variant as it is now. A *re-release* is the previous version
minus every sample removed since (opt-outs, hash lists): its shards are the previous shards with
those samples dropped, keys unchanged, so the diff alone turns an old copy into the new one
(``apply_diff``). Removed samples appear in the diff by key and sha256 of their uid, never by URL.
Only the newest version keeps shard files; older versions keep their manifest, members and diff.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra.checksums import file_sha256
from infra.config import InputError, ReleaseConfig
from infra.delta_store import Lake, Lineage
from infra.tables import BLOCKLIST_MATCHES, CURATED, IMAGES, RELEASES, REMOVALS, SHARDS
from spark_jobs import shard_export

MANIFEST = "manifest.json"
MEMBERS = "members.parquet"
DIFF = "diff.json"
DIFF_ROWS = "diff.parquet"
UIDS_PER_READ = 2000  # image bytes are read this many samples at a time, never all at once
_MEMBERS_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("uid", pa.string())])
_DIFF_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("uid_sha256", pa.string()),
                          ("reason", pa.string())])


class ReleaseError(InputError):
    """A release or diff that cannot be made or applied as asked."""


class ReleaseNeedsConfirmation(ReleaseError):
    """The next version would drop more than release.max_auto_drop_fraction of the previous one."""


@dataclass(frozen=True)
class ReleaseVersion:
    release: str
    version: int
    kind: str  # snapshot or rerelease
    path: str
    samples: int
    shards: int
    removed: int
    added: int


def releases_root(lake: Lake) -> Path:
    return Path(lake.root) / "releases"


def version_dir(lake: Lake, release: str, version: int) -> Path:
    return releases_root(lake) / release / f"v{version}"


def export_id(release: str, version: int) -> str:
    return f"{release}/v{version}"


def latest(lake: Lake, release: str) -> dict | None:
    """The newest RELEASES row of ``release`` (its ``path`` relative to the lake root), or None."""
    rows = lake.read(RELEASES, partitions=[release]).to_pylist()
    return max(rows, key=lambda r: r["version"]) if rows else None


def uid_digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()


# -- reading a version ---------------------------------------------------------------------------

def published_members(directory: Path) -> pa.Table:
    """(shard, key, uid) of a version as it was published."""
    return pq.read_table(directory / MEMBERS)


def current_members(directory: Path) -> pa.Table:
    """(shard, key, uid) of the shard files on disk now (a removal may have rewritten some)."""
    tables = [
        pq.read_table(path, columns=["key", "uid"]).append_column(
            "shard", pa.array([path.stem] * pq.read_metadata(path).num_rows, pa.string()))
        for path in sorted(directory.glob("[0-9]*.parquet"))
    ]
    if not tables:
        return _MEMBERS_SCHEMA.empty_table()
    return pa.concat_tables(tables).select(_MEMBERS_SCHEMA.names).cast(_MEMBERS_SCHEMA)


def _manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


# -- making a version ----------------------------------------------------------------------------

def _samples(lake: Lake, rows: pa.Table) -> Iterator[pa.RecordBatch]:
    """``rows`` (sorted by uid) joined with their image bytes, a slice at a time."""
    for start in range(0, rows.num_rows, UIDS_PER_READ):
        chunk = rows.slice(start, UIDS_PER_READ)
        images = lake.read(IMAGES, columns=["uid", "image"], filter=pc.field("uid").isin(chunk["uid"]))
        yield from chunk.join(images, "uid", join_type="inner").sort_by("uid").to_batches()


def _removal_reasons(lake: Lake, uids: list[str]) -> dict[str, str]:
    """Why each uid left: an opt-out request, a hash list, or (neither) the curation rules."""
    wanted = pa.array(uids, pa.string())
    reasons = {uid: "curation" for uid in uids}
    matches = lake.read(BLOCKLIST_MATCHES, columns=["uid", "source"], filter=pc.field("uid").isin(wanted))
    for uid, source in sorted(zip(matches["uid"].to_pylist(), matches["source"].to_pylist()), reverse=True):
        reasons[uid] = f"hash-list:{source}"
    removed = lake.read(REMOVALS, columns=["uid"], filter=pc.field("uid").isin(wanted))
    for uid in removed["uid"].to_pylist():
        reasons[uid] = "opt-out"
    return reasons


def _diff(lake: Lake, previous: Path, members: pa.Table, shards: list[shard_export.ShardInfo],
          out: Path, kind: str) -> tuple[int, int]:
    """Write diff.json/diff.parquet of ``out`` against the published ``previous``; (removed, added)."""
    old = published_members(previous)
    old_manifest = _manifest(previous)
    new_uids = set(members["uid"].to_pylist())
    old_uids = set(old["uid"].to_pylist())
    gone = old.filter(pc.invert(pc.is_in(old["uid"], pa.array(sorted(new_uids), pa.string()))))
    reasons = _removal_reasons(lake, gone["uid"].to_pylist())
    rows = pa.table(
        {
            "shard": gone["shard"], "key": gone["key"],
            "uid_sha256": [uid_digest(u) for u in gone["uid"].to_pylist()],
            "reason": [reasons[u] for u in gone["uid"].to_pylist()],
        },
        schema=_DIFF_SCHEMA,
    ).sort_by([("shard", "ascending"), ("key", "ascending")])
    pq.write_table(rows, out / DIFF_ROWS)
    before = {s["shard"]: s["sha256"] for s in old_manifest["shards"]}
    after = {s.shard: s.sha256 for s in shards}
    dropped = rows["shard"].to_pylist()
    by_reason: dict[str, int] = {}
    for reason in rows["reason"].to_pylist():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    added = len(new_uids - old_uids)
    diff = {
        "release": old_manifest["release"],
        "from_version": old_manifest["version"],
        "to_version": old_manifest["version"] + 1,
        "kind": kind,
        # Only a re-release keeps keys: its diff turns an old copy into the new one by deletion.
        "applicable": kind == "rerelease" and added == 0,
        "removed": rows.num_rows,
        "added": added,
        "removed_by_reason": dict(sorted(by_reason.items())),
        "shards_changed": [
            {"shard": name, "from_sha256": before.get(name), "to_sha256": after.get(name),
             "removed": dropped.count(name)}
            for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)
        ],
        "removed_samples": DIFF_ROWS,
    }
    (out / DIFF).write_text(json.dumps(diff, indent=2, sort_keys=True))
    return rows.num_rows, added


def _write_version(lake: Lake, config: ReleaseConfig, version: int, kind: str, shards: list[shard_export.ShardInfo],
                   members: pa.Table, out: Path, previous: Path | None, source_versions: dict[str, int],
                   rules: dict, lineage: Lineage) -> ReleaseVersion:
    pq.write_table(members.select(_MEMBERS_SCHEMA.names).cast(_MEMBERS_SCHEMA), out / MEMBERS)
    removed, added = (0, members.num_rows) if previous is None else _diff(lake, previous, members, shards, out, kind)
    now = dt.datetime.now(dt.timezone.utc)
    manifest = {
        "release": config.name, "version": version, "kind": kind, "variant": config.variant,
        "previous_version": version - 1 if previous is not None else None,
        "created_at": now.isoformat(timespec="seconds"), "run_id": lineage.run_id,
        "samples": members.num_rows, "source_versions": source_versions, "rules": rules,
        "shards": [{"shard": s.shard, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256} for s in shards],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ident = export_id(config.name, version)
    # Paths relative to the lake root: a lake copied or moved elsewhere still finds its shards.
    relative = [dataclasses.replace(s, path=_relative(lake, s.path)) for s in shards]
    lake.replace_partitions(SHARDS, shard_export.manifest_table(relative, ident, source_versions.get("curated", -1), now),
                            [ident], lineage)
    row = {
        "release": config.name, "version": version, "kind": kind,
        "previous_version": manifest["previous_version"], "variant": config.variant,
        "samples": members.num_rows, "shards": len(shards), "removed": removed, "added": added,
        "source_versions": json.dumps(source_versions, sort_keys=True), "rules": json.dumps(rules, sort_keys=True),
        "path": _relative(lake, out), "created_at": now, "run_id": lineage.run_id,
    }
    lake.append(RELEASES, pa.Table.from_pylist([row], schema=RELEASES.schema), lineage)
    if previous is not None:
        _retire(lake, config.name, previous, lineage)
    return ReleaseVersion(config.name, version, kind, str(out), members.num_rows, len(shards), removed, added)


def _relative(lake: Lake, path: str | Path) -> str:
    return Path(path).relative_to(lake.root).as_posix()


def _retire(lake: Lake, release: str, directory: Path, lineage: Lineage) -> None:
    """A superseded version keeps its manifest, members and diff; its shard files go (the new
    version holds what is still released: re-release shards share their unchanged files)."""
    for path in directory.iterdir():
        if path.name not in (MANIFEST, MEMBERS, DIFF, DIFF_ROWS):
            path.unlink()
    version = int(directory.name.removeprefix("v"))
    ident = export_id(release, version)
    lake.replace_partitions(SHARDS, SHARDS.schema.empty_table(), [ident], lineage)


def _fresh_dir(lake: Lake, release: str, version: int) -> Path:
    out = version_dir(lake, release, version)
    if out.exists():  # a version dir without a RELEASES row: a run that died before committing it
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def make_release(lake: Lake, config: ReleaseConfig, rules: dict, source_versions: dict[str, int], lineage: Lineage,
                 image_ext: str = "jpg", mode: str = "auto", confirmed_by: str | None = None) -> ReleaseVersion | None:
    """Make the next version of ``config.name`` if anything changed; None when nothing did.

    ``auto``: the first version, or any version that adds samples, is a snapshot of the curated
    variant; when samples only left, a re-release. ``rerelease``: the previous version minus the
    samples removed (opt-outs) or hash-listed since, whatever else the curated set gained.
    A version that would drop more than ``config.max_auto_drop_fraction`` of the previous one's
    samples is refused (ReleaseNeedsConfirmation) unless ``confirmed_by`` names who confirmed it.
    """
    if mode not in ("auto", "rerelease"):
        raise ReleaseError(f"release mode must be auto or rerelease, got {mode!r}")
    last = latest(lake, config.name)
    previous = version_dir(lake, config.name, last["version"]) if last else None
    curated_version = source_versions.get("curated")
    curated = lake.read(CURATED, version=curated_version, filter=pc.field("variant") == config.variant)
    curated_uids = set(curated["uid"].to_pylist())
    if previous is None or not (previous / MEMBERS).exists():
        if mode == "rerelease":
            raise ReleaseError(f"release {config.name} has no previous version to re-release")
        return _snapshot(lake, config, curated, 1 if last is None else last["version"] + 1, previous,
                         source_versions, rules, lineage, image_ext)
    members = current_members(previous)
    held = set(members["uid"].to_pylist())
    if mode == "rerelease":
        removed = set(lake.read(REMOVALS, columns=["uid"])["uid"].to_pylist())
        listed = set(lake.read(BLOCKLIST_MATCHES, columns=["uid"])["uid"].to_pylist())
        drop = held & (removed | listed)
    else:
        if curated_uids - held:
            _check_drop(config, last, previous, curated_uids, confirmed_by)
            return _snapshot(lake, config, curated, last["version"] + 1, previous, source_versions,
                             {**rules, "confirmed_by": confirmed_by}, lineage, image_ext)
        drop = held - curated_uids
    amended = members.num_rows != pq.read_metadata(previous / MEMBERS).num_rows
    if not drop and not amended:
        return None
    _check_drop(config, last, previous, held - drop, confirmed_by)
    return _rerelease(lake, config, previous, members, drop, last["version"] + 1, source_versions,
                      {**rules, "confirmed_by": confirmed_by}, lineage)


def _check_drop(config: ReleaseConfig, last: dict, previous: Path, kept: set[str], confirmed_by: str | None) -> None:
    """Refuse a version that drops too much of the published one (an over-broad removal, a curation
    gone wrong) until a person confirms it."""
    published = published_members(previous)["uid"].to_pylist()
    dropped = len(set(published) - kept)
    if confirmed_by or not published or dropped <= config.max_auto_drop_fraction * len(published):
        return
    raise ReleaseNeedsConfirmation(
        f"{config.name} v{last['version'] + 1} would drop {dropped:,} of the {len(published):,} samples of "
        f"v{last['version']} ({dropped / len(published):.1%}), more than release.max_auto_drop_fraction "
        f"({config.max_auto_drop_fraction:.1%}); check the removals, then confirm: "
        "pairlake release rerelease --confirmed-by WHO")


def _snapshot(lake: Lake, config: ReleaseConfig, curated: pa.Table, version: int, previous: Path | None,
              source_versions: dict[str, int], rules: dict, lineage: Lineage, image_ext: str) -> ReleaseVersion:
    rows = curated.drop_columns(["variant"]).sort_by("uid")
    out = _fresh_dir(lake, config.name, version)
    shards = shard_export.export_shards(_samples(lake, rows), out, config.samples_per_shard, image_ext=image_ext)
    return _write_version(lake, config, version, "snapshot", shards, current_members(out), out, previous,
                          source_versions, rules, lineage)


def _rerelease(lake: Lake, config: ReleaseConfig, previous: Path, members: pa.Table, drop: set[str], version: int,
               source_versions: dict[str, int], rules: dict, lineage: Lineage) -> ReleaseVersion:
    out = _fresh_dir(lake, config.name, version)
    dropping = members.filter(pc.is_in(members["uid"], pa.array(sorted(drop), pa.string())))
    keys_by_shard: dict[str, set[str]] = {}
    for shard, key in zip(dropping["shard"].to_pylist(), dropping["key"].to_pylist()):
        keys_by_shard.setdefault(shard, set()).add(key)
    shards = []
    for tar in sorted(previous.glob("[0-9]*.tar")):
        if tar.stem in keys_by_shard:
            shards.append(shard_export.rewrite_shard(tar, keys_by_shard[tar.stem], out))
        else:  # unchanged: share the files, no bytes copied
            for name in (tar.name, f"{tar.stem}.parquet", f"{tar.stem}_stats.json"):
                os.link(previous / name, out / name)
            stats = json.loads((out / f"{tar.stem}_stats.json").read_text())
            shards.append(shard_export.ShardInfo(tar.stem, str(out / tar.name), stats["count"], stats["bytes"],
                                                 stats["sha256"]))
    return _write_version(lake, config, version, "rerelease", shards, current_members(out), out, previous,
                          source_versions, rules, lineage)


# -- removals and old copies ---------------------------------------------------------------------

def withdraw(lake: Lake, uids: set[str], lineage: Lineage) -> list[str]:
    """Rewrite, in place, every shard on disk that holds one of ``uids``; returns "<export>:<shard>"
    for each shard rewritten. The version's manifest stays as published; table shards is updated."""
    shards = lake.read(SHARDS)
    rewritten: list[str] = []
    wanted = pa.array(sorted(uids), pa.string())
    for ident in sorted(set(shards["export_id"].to_pylist())):
        rows = shards.filter(pc.equal(shards["export_id"], ident)).to_pylist()
        changed = False
        for row in rows:
            tar = Path(lake.root) / row["path"]  # relative to the lake root (absolute in older lakes)
            parquet = tar.with_suffix(".parquet")
            if not parquet.exists():
                continue
            held = pq.read_table(parquet, columns=["key", "uid"])
            keys = held.filter(pc.is_in(held["uid"], wanted))["key"].to_pylist()
            if keys:
                info = shard_export.rewrite_shard(tar, set(keys), tar.parent)
                row.update(samples=info.samples, bytes=info.bytes, sha256=info.sha256)
                rewritten.append(f"{ident}:{row['shard']}")
                changed = True
        if changed:
            lake.replace_partitions(SHARDS, pa.Table.from_pylist(rows, schema=SHARDS.schema), [ident], lineage)
    return rewritten


def apply_diff(diff_path: str | Path, shards_dir: str | Path, out_dir: str | Path | None = None) -> list[str]:
    """Clean a copy of the previous version's shards with a published diff (in place, or into
    ``out_dir``); every changed shard is checked against the diff's checksums before and after.
    Returns the shards rewritten."""
    diff_file = Path(diff_path)
    diff_file = diff_file / DIFF if diff_file.is_dir() else diff_file
    try:
        diff = json.loads(diff_file.read_text())
        removed = pq.read_table(diff_file.parent / diff["removed_samples"])
    except (OSError, ValueError, KeyError) as exc:
        raise ReleaseError(f"cannot read the diff {diff_file}: {exc}") from None
    if not diff.get("applicable"):
        raise ReleaseError(
            f"v{diff['to_version']} of {diff['release']} is a snapshot ({diff['added']} samples added): "
            "it cannot be made from v{0} by deletion; download it".format(diff["from_version"])
        )
    source = Path(shards_dir)
    out = Path(out_dir) if out_dir is not None else source
    keys: dict[str, set[str]] = {}
    for shard, key in zip(removed["shard"].to_pylist(), removed["key"].to_pylist()):
        keys.setdefault(shard, set()).add(key)
    done = []
    for change in diff["shards_changed"]:
        tar = source / f"{change['shard']}.tar"
        if not tar.exists():
            raise ReleaseError(f"{tar} is missing: the diff changes shard {change['shard']}")
        if file_sha256(tar) != change["from_sha256"]:
            raise ReleaseError(f"{tar} is not shard {change['shard']} of v{diff['from_version']} (checksum differs)")
    for change in diff["shards_changed"]:
        info = shard_export.rewrite_shard(source / f"{change['shard']}.tar", keys.get(change["shard"], set()), out)
        if info.sha256 != change["to_sha256"]:
            raise ReleaseError(f"shard {change['shard']} did not come out as v{diff['to_version']} (checksum differs)")
        done.append(change["shard"])
    if out != source:  # shards the diff leaves alone are copied as they are
        for tar in sorted(source.glob("[0-9]*.tar")):
            if tar.stem not in done:
                for name in (tar.name, f"{tar.stem}.parquet", f"{tar.stem}_stats.json"):
                    if (source / name).exists():
                        shutil.copyfile(source / name, out / name)
    return done
