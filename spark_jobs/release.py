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
Every file is read and written through the lake's Folder, so a release lives in a local folder or a
bucket alike; Spark reads the shards' parquet in its tasks (a task per shard, or per row group of
members.parquet), never through the driver.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra import lake_layout
from infra.checksums import stream_sha256
from infra.config import InputError, ReleaseConfig
from infra.delta_store import Lake, Lineage
from infra.lake_storage import Folder, as_folder
from infra.spark import read_table
from infra.tables import BLOCKLIST_MATCHES, CURATED, RELEASES, REMOVALS, SHARDS, TableSpec
from spark_jobs import shard_export, shard_export_job

MANIFEST = "manifest.json"
MEMBERS = "members.parquet"
DIFF = "diff.json"
DIFF_ROWS = "diff.parquet"
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
    path: str  # the version's folder: a local path, or an s3:// URI
    samples: int
    shards: int
    removed: int
    added: int


def version_dir(lake: Lake, release: str, version: int) -> Folder:
    return lake.folder(lake_layout.release_version(release, version))


def export_id(release: str, version: int) -> str:
    return f"{release}/v{version}"


def latest(lake: Lake, release: str) -> dict | None:
    """The newest RELEASES row of ``release`` (its ``path`` relative to the lake root), or None."""
    rows = lake.read(RELEASES, partitions=[release]).to_pylist()
    return max(rows, key=lambda r: r["version"]) if rows else None


# -- reading a version ---------------------------------------------------------------------------

def _shard_rows(directory: Folder, name: str) -> pa.Table:
    """(shard, key, uid) of the shard whose parquet is ``name``."""
    with directory.open(name) as fh:
        rows = pq.read_table(fh, columns=["key", "uid"])
    shard = name.removesuffix(".parquet")
    return rows.append_column("shard", pa.array([shard] * rows.num_rows, pa.string())).select(
        _MEMBERS_SCHEMA.names).cast(_MEMBERS_SCHEMA)


def shard_members(directory: Folder | str | Path) -> Iterator[pa.Table]:
    """(shard, key, uid) of each shard file there now, one shard at a time (a removal may have
    rewritten some since the version was published)."""
    directory = as_folder(directory)
    for name in directory.names("[0-9]*.parquet"):
        yield _shard_rows(directory, name)


def _pieces_frame(spark: SparkSession, lake: Lake, key: str, pieces: list[tuple[str, int]]) -> DataFrame:
    """(shard, key, uid) read by Spark tasks from parquet files of the lake folder ``key``: a piece
    is (a shard's parquet, -1) or (members.parquet, one of its row groups)."""
    if not pieces:
        return spark.createDataFrame([], from_arrow_schema(_MEMBERS_SCHEMA))

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        directory = lake.folder(key)
        for batch in batches:
            for name, group in zip(batch.column("name").to_pylist(), batch.column("group").to_pylist()):
                if group < 0:
                    yield from _shard_rows(directory, name).to_batches()
                else:
                    with directory.open(name) as fh:
                        yield from pq.ParquetFile(fh).read_row_group(group).cast(_MEMBERS_SCHEMA).to_batches()

    listed = spark.createDataFrame(pieces, "name string, group int")
    return listed.repartition(len(pieces)).mapInArrow(read, from_arrow_schema(_MEMBERS_SCHEMA))


def _current(spark: SparkSession, lake: Lake, key: str) -> DataFrame:
    """shard_members of the lake folder ``key`` as a DataFrame."""
    return _pieces_frame(spark, lake, key, [(name, -1) for name in lake.folder(key).names("[0-9]*.parquet")])


def _published_count(directory: Folder) -> int:
    with directory.open(MEMBERS) as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def _published(spark: SparkSession, lake: Lake, key: str) -> DataFrame:
    """(shard, key, uid) of a version as it was published."""
    with lake.folder(key).open(MEMBERS) as fh:
        groups = pq.ParquetFile(fh).metadata.num_row_groups
    return _pieces_frame(spark, lake, key, [(MEMBERS, group) for group in range(groups)])


def _uids(spark: SparkSession, lake: Lake, *specs: TableSpec) -> DataFrame:
    """The uids in any of ``specs`` (tables never written hold none)."""
    frames = [read_table(spark, lake, spec, columns=["uid"]) for spec in specs if lake.version(spec) is not None]
    if not frames:
        return spark.createDataFrame([], "uid string")
    union = frames[0]
    for more in frames[1:]:
        union = union.unionByName(more)
    return union


def _manifest(directory: Folder) -> dict:
    return json.loads(directory.read_bytes(MANIFEST))


# -- making a version ----------------------------------------------------------------------------

def _removal_reasons(spark: SparkSession, lake: Lake, gone: DataFrame) -> DataFrame:
    """``gone`` with why each uid left: an opt-out request, a hash list (the first by name), or
    (neither) the curation rules."""
    reason = F.lit("curation")
    if lake.version(BLOCKLIST_MATCHES) is not None:
        listed = read_table(spark, lake, BLOCKLIST_MATCHES, columns=["uid", "source"]).groupBy("uid").agg(
            F.min("source").alias("_list"))
        gone = gone.join(listed, "uid", "left")
        reason = F.when(F.col("_list").isNotNull(), F.concat(F.lit("hash-list:"), F.col("_list"))).otherwise(reason)
    if lake.version(REMOVALS) is not None:
        removed = read_table(spark, lake, REMOVALS, columns=["uid"]).distinct().withColumn("_removed", F.lit(True))
        gone = gone.join(removed, "uid", "left")
        reason = F.when(F.col("_removed"), F.lit("opt-out")).otherwise(reason)
    return gone.withColumn("reason", reason)


def _diff(spark: SparkSession, lake: Lake, previous: str, shards: list[shard_export.ShardInfo], out: str,
          kind: str) -> tuple[int, int]:
    """Write diff.json/diff.parquet of version ``out`` against the published ``previous`` (layout
    keys); (removed, added). The removed samples' rows come to the driver: a diff holds what left,
    not the release."""
    old, new = _published(spark, lake, previous), _current(spark, lake, out).select("uid")
    gone = _removal_reasons(spark, lake, old.join(new, "uid", "left_anti"))
    rows = (
        gone.select("shard", "key", F.sha2("uid", 256).alias("uid_sha256"), "reason")
        .toArrow().cast(_DIFF_SCHEMA).sort_by([("shard", "ascending"), ("key", "ascending")])
    )
    with lake.folder(out).publish(DIFF_ROWS) as fh:
        pq.write_table(rows, fh)
    added = new.join(old.select("uid"), "uid", "left_anti").count()
    old_manifest = _manifest(lake.folder(previous))
    before = {s["shard"]: s["sha256"] for s in old_manifest["shards"]}
    after = {s.shard: s.sha256 for s in shards}
    dropped = Counter(rows["shard"].to_pylist())
    diff = {
        "release": old_manifest["release"],
        "from_version": old_manifest["version"],
        "to_version": old_manifest["version"] + 1,
        "kind": kind,
        # Only a re-release keeps keys: its diff turns an old copy into the new one by deletion.
        "applicable": kind == "rerelease" and added == 0,
        "removed": rows.num_rows,
        "added": added,
        "removed_by_reason": dict(sorted(Counter(rows["reason"].to_pylist()).items())),
        "shards_changed": [
            {"shard": name, "from_sha256": before.get(name), "to_sha256": after.get(name), "removed": dropped[name]}
            for name in sorted(set(before) | set(after))
            if before.get(name) != after.get(name)
        ],
        "removed_samples": DIFF_ROWS,
    }
    lake.folder(out).write_bytes(DIFF, json.dumps(diff, indent=2, sort_keys=True).encode())
    return rows.num_rows, added


def write_members(out: Folder) -> int:
    """members.parquet from the shard files, a shard at a time; how many samples there are."""
    samples = 0
    with out.publish(MEMBERS) as fh, pq.ParquetWriter(fh, _MEMBERS_SCHEMA) as writer:
        writer.write_table(_MEMBERS_SCHEMA.empty_table())  # a version without samples still has the file
        for rows in shard_members(out):
            writer.write_table(rows)
            samples += rows.num_rows
    return samples


def _write_version(spark: SparkSession, lake: Lake, config: ReleaseConfig, version: int, kind: str,
                   shards: list[shard_export.ShardInfo], out: str, previous: str | None,
                   source_versions: dict[str, int], rules: dict, lineage: Lineage) -> ReleaseVersion:
    """members, diff and manifest of the version at ``out`` (layout keys here and for ``previous``),
    then its rows in SHARDS and RELEASES; the previous version retires."""
    samples = write_members(lake.folder(out))
    removed, added = (0, samples) if previous is None else _diff(spark, lake, previous, shards, out, kind)
    now = dt.datetime.now(dt.timezone.utc)
    manifest = {
        "release": config.name, "version": version, "kind": kind, "variant": config.variant,
        "previous_version": version - 1 if previous is not None else None,
        "created_at": now.isoformat(timespec="seconds"), "run_id": lineage.run_id,
        "samples": samples, "source_versions": source_versions, "rules": rules,
        "shards": [{"shard": s.shard, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256} for s in shards],
    }
    lake.folder(out).write_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    ident = export_id(config.name, version)
    # Paths relative to the lake root: a lake copied or moved elsewhere still finds its shards.
    relative = [dataclasses.replace(s, path=f"{out}/{s.shard}.tar") for s in shards]
    lake.replace_partitions(SHARDS, shard_export.manifest_table(relative, ident, source_versions.get("curated", -1), now),
                            [ident], lineage)
    row = {
        "release": config.name, "version": version, "kind": kind,
        "previous_version": manifest["previous_version"], "variant": config.variant,
        "samples": samples, "shards": len(shards), "removed": removed, "added": added,
        "source_versions": json.dumps(source_versions, sort_keys=True), "rules": json.dumps(rules, sort_keys=True),
        "path": out, "created_at": now, "run_id": lineage.run_id,
    }
    lake.append(RELEASES, pa.Table.from_pylist([row], schema=RELEASES.schema), lineage)
    if previous is not None:
        _retire(lake, config.name, previous, lineage)
    return ReleaseVersion(config.name, version, kind, lake.uri_of(out), samples, len(shards), removed, added)


def _retire(lake: Lake, release: str, key: str, lineage: Lineage) -> None:
    """A superseded version keeps its manifest, members and diff; its shard files go (the new
    version holds what is still released: re-release shards share their unchanged files)."""
    directory = lake.folder(key)
    for name in directory.names():
        if name not in (MANIFEST, MEMBERS, DIFF, DIFF_ROWS):
            directory.delete(name)
    version = int(key.rsplit("/v", 1)[1])
    ident = export_id(release, version)
    lake.replace_partitions(SHARDS, SHARDS.schema.empty_table(), [ident], lineage)


def _fresh_dir(lake: Lake, release: str, version: int) -> str:
    """The new version's folder, emptied of what a run that died before committing it left there."""
    key = lake_layout.release_version(release, version)
    lake.folder(key).remove()
    lake.folder(key).create()
    return key


def make_release(spark: SparkSession, lake: Lake, config: ReleaseConfig, rules: dict, source_versions: dict[str, int],
                 lineage: Lineage, image_ext: str = "jpg", mode: str = "auto",
                 confirmed_by: str | None = None) -> ReleaseVersion | None:
    """Make the next version of ``config.name`` if anything changed; None when nothing did.

    ``auto``: the first version, or any version that adds samples, is a snapshot of the curated
    variant; when samples only left, a re-release. ``rerelease``: the previous version minus the
    samples removed (opt-outs) or hash-listed since, whatever else the curated set gained.
    A version that would drop more than ``config.max_auto_drop_fraction`` of the previous one's
    samples is refused (ReleaseNeedsConfirmation) unless ``confirmed_by`` names who confirmed it.
    Membership is compared in Spark: no set of the release's uids is held by the driver.
    """
    if mode not in ("auto", "rerelease"):
        raise ReleaseError(f"release mode must be auto or rerelease, got {mode!r}")
    last = latest(lake, config.name)
    previous = lake_layout.release_version(config.name, last["version"]) if last else None
    if previous is None or not lake.folder(previous).exists(MEMBERS):
        if mode == "rerelease":
            raise ReleaseError(f"release {config.name} has no previous version to re-release")
        return _snapshot(spark, lake, config, 1 if last is None else last["version"] + 1, previous,
                         source_versions, rules, lineage, image_ext)
    curated = read_table(spark, lake, CURATED, version=source_versions.get("curated"), columns=["uid"],
                         where={"variant": [config.variant]})
    held = _current(spark, lake, previous)
    if mode == "rerelease":
        drop = held.join(_uids(spark, lake, REMOVALS, BLOCKLIST_MATCHES), "uid", "left_semi")
    else:
        if not curated.join(held, "uid", "left_anti").isEmpty():
            _check_drop(spark, lake, config, last, previous, curated, confirmed_by)
            return _snapshot(spark, lake, config, last["version"] + 1, previous, source_versions,
                             {**rules, "confirmed_by": confirmed_by}, lineage, image_ext)
        drop = held.join(curated, "uid", "left_anti")
    amended = held.count() != _published_count(lake.folder(previous))
    if drop.isEmpty() and not amended:
        return None
    _check_drop(spark, lake, config, last, previous, held.join(drop.select("uid"), "uid", "left_anti"), confirmed_by)
    return _rerelease(spark, lake, config, previous, drop, last["version"] + 1, source_versions,
                      {**rules, "confirmed_by": confirmed_by}, lineage)


def _check_drop(spark: SparkSession, lake: Lake, config: ReleaseConfig, last: dict, previous: str, kept: DataFrame,
                confirmed_by: str | None) -> None:
    """Refuse a version that drops too much of the published one (an over-broad removal, a curation
    gone wrong) until a person confirms it."""
    published = _published_count(lake.folder(previous))
    if confirmed_by or not published:
        return
    dropped = _published(spark, lake, previous).join(kept.select("uid"), "uid", "left_anti").count()
    if dropped <= config.max_auto_drop_fraction * published:
        return
    raise ReleaseNeedsConfirmation(
        f"{config.name} v{last['version'] + 1} would drop {dropped:,} of the {published:,} samples of "
        f"v{last['version']} ({dropped / published:.1%}), more than release.max_auto_drop_fraction "
        f"({config.max_auto_drop_fraction:.1%}); check the removals, then confirm: "
        "pairlake release rerelease --confirmed-by WHO")


def _snapshot(spark: SparkSession, lake: Lake, config: ReleaseConfig, version: int, previous: str | None,
              source_versions: dict[str, int], rules: dict, lineage: Lineage, image_ext: str) -> ReleaseVersion:
    out = _fresh_dir(lake, config.name, version)
    shards = shard_export_job.export_variant_shards(
        spark, lake, config.variant, out, config.samples_per_shard, image_ext,
        curated_version=source_versions.get("curated"), images_version=source_versions.get("images"))
    return _write_version(spark, lake, config, version, "snapshot", shards, out, previous, source_versions, rules,
                          lineage)


def _rerelease(spark: SparkSession, lake: Lake, config: ReleaseConfig, previous: str, drop: DataFrame, version: int,
               source_versions: dict[str, int], rules: dict, lineage: Lineage) -> ReleaseVersion:
    """The previous version's shards less ``drop`` (shard, key, uid): the shards that lose samples
    are rewritten in parallel, one Spark task each; the others are shared, their bytes never
    passing through this process (hard links on a disk, server-side copies in a bucket)."""
    out = _fresh_dir(lake, config.name, version)
    shards = shard_export_job.rewrite_shards(spark, lake, drop, previous, out)
    changed = {info.shard for info in shards}
    source, target = lake.folder(previous), lake.folder(out)
    for tar in source.names("[0-9]*.tar"):
        shard = tar.removesuffix(".tar")
        if shard not in changed:
            for name in (tar, f"{shard}.parquet", f"{shard}_stats.json"):
                source.share(name, target)
            stats = json.loads(target.read_bytes(f"{shard}_stats.json"))
            shards.append(shard_export.ShardInfo(shard, target.file(tar), stats["count"], stats["bytes"],
                                                 stats["sha256"]))
    shards.sort(key=lambda info: info.shard)
    return _write_version(spark, lake, config, version, "rerelease", shards, out, previous, source_versions, rules,
                          lineage)


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
            # The path is relative to the lake root (absolute in older lakes).
            directory, tar = row["path"].rsplit("/", 1)
            folder, shard = lake.folder(directory), tar.removesuffix(".tar")
            if not folder.exists(f"{shard}.parquet"):
                continue
            with folder.open(f"{shard}.parquet") as fh:
                held = pq.read_table(fh, columns=["key", "uid"])
            keys = held.filter(pc.is_in(held["uid"], wanted))["key"].to_pylist()
            if keys:
                info = shard_export.rewrite_shard(folder, shard, set(keys))
                row.update(samples=info.samples, bytes=info.bytes, sha256=info.sha256)
                rewritten.append(f"{ident}:{row['shard']}")
                changed = True
        if changed:
            lake.replace_partitions(SHARDS, pa.Table.from_pylist(rows, schema=SHARDS.schema), [ident], lineage)
    return rewritten


def apply_diff(diff: Folder | str | Path, shards_dir: Folder | str | Path,
               out_dir: Folder | str | Path | None = None) -> list[str]:
    """Clean a copy of the previous version's shards with a published diff (in place, or into
    ``out_dir``); every changed shard is checked against the diff's checksums before and after.
    ``diff`` is diff.json or the new version's folder (a local path, or a Folder of the lake).
    Returns the shards rewritten."""
    if isinstance(diff, Folder) or Path(diff).is_dir():
        published, diff_name = as_folder(diff), DIFF
    else:
        published, diff_name = Folder.local(Path(diff).parent), Path(diff).name
    try:
        changes = json.loads(published.read_bytes(diff_name))
        with published.open(changes["removed_samples"]) as fh:
            removed = pq.read_table(fh)
    except (OSError, ValueError, KeyError) as exc:
        raise ReleaseError(f"cannot read the diff {published.file(diff_name)}: {exc}") from None
    if not changes.get("applicable"):
        raise ReleaseError(
            f"v{changes['to_version']} of {changes['release']} is a snapshot ({changes['added']} samples added): "
            "it cannot be made from v{0} by deletion; download it".format(changes["from_version"])
        )
    source = as_folder(shards_dir)
    out = as_folder(out_dir) if out_dir is not None else source
    keys: dict[str, set[str]] = {}
    for shard, key in zip(removed["shard"].to_pylist(), removed["key"].to_pylist()):
        keys.setdefault(shard, set()).add(key)
    for change in changes["shards_changed"]:
        tar = f"{change['shard']}.tar"
        if not source.exists(tar):
            raise ReleaseError(f"{source.file(tar)} is missing: the diff changes shard {change['shard']}")
        with source.stream(tar) as fh:
            if stream_sha256(fh) != change["from_sha256"]:
                raise ReleaseError(f"{source.file(tar)} is not shard {change['shard']} of "
                                   f"v{changes['from_version']} (checksum differs)")
    done = []
    for change in changes["shards_changed"]:
        info = shard_export.rewrite_shard(source, change["shard"], keys.get(change["shard"], set()), out)
        if info.sha256 != change["to_sha256"]:
            raise ReleaseError(f"shard {change['shard']} did not come out as v{changes['to_version']} (checksum differs)")
        done.append(change["shard"])
    if out != source:  # shards the diff leaves alone are copied as they are
        for tar in source.names("[0-9]*.tar"):
            shard = tar.removesuffix(".tar")
            if shard not in done:
                for name in (tar, f"{shard}.parquet", f"{shard}_stats.json"):
                    if source.exists(name):
                        with source.stream(name) as fh, out.publish(name) as copy:
                            shutil.copyfileobj(fh, copy, 1 << 20)
    return done
