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
import json
import os
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
from infra.checksums import file_sha256
from infra.config import InputError, ReleaseConfig
from infra.delta_store import Lake, Lineage
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
    path: str
    samples: int
    shards: int
    removed: int
    added: int


def releases_root(lake: Lake) -> Path:
    return lake.path(lake_layout.RELEASES)


def version_dir(lake: Lake, release: str, version: int) -> Path:
    return lake.path(lake_layout.release_version(release, version))


def export_id(release: str, version: int) -> str:
    return f"{release}/v{version}"


def latest(lake: Lake, release: str) -> dict | None:
    """The newest RELEASES row of ``release`` (its ``path`` relative to the lake root), or None."""
    rows = lake.read(RELEASES, partitions=[release]).to_pylist()
    return max(rows, key=lambda r: r["version"]) if rows else None


# -- reading a version ---------------------------------------------------------------------------

def shard_members(directory: Path) -> Iterator[pa.Table]:
    """(shard, key, uid) of each shard file on disk now, one shard at a time (a removal may have
    rewritten some since the version was published)."""
    for path in sorted(directory.glob("[0-9]*.parquet")):
        rows = pq.read_table(path, columns=["key", "uid"])
        yield rows.append_column("shard", pa.array([path.stem] * rows.num_rows, pa.string())).select(
            _MEMBERS_SCHEMA.names).cast(_MEMBERS_SCHEMA)


def _current(spark: SparkSession, directory: Path) -> DataFrame:
    """shard_members of ``directory`` as a DataFrame."""
    files = sorted(str(path) for path in directory.glob("[0-9]*.parquet"))
    if not files:
        return spark.createDataFrame([], from_arrow_schema(_MEMBERS_SCHEMA))
    shard = F.regexp_extract(F.input_file_name(), r"(\d+)\.parquet$", 1)
    return spark.read.parquet(*files).select(shard.alias("shard"), "key", "uid")


def _published(spark: SparkSession, directory: Path) -> DataFrame:
    """(shard, key, uid) of a version as it was published."""
    return spark.read.parquet(str(directory / MEMBERS))


def _uids(spark: SparkSession, lake: Lake, *specs: TableSpec) -> DataFrame:
    """The uids in any of ``specs`` (tables never written hold none)."""
    frames = [read_table(spark, lake, spec, columns=["uid"]) for spec in specs if lake.version(spec) is not None]
    if not frames:
        return spark.createDataFrame([], "uid string")
    union = frames[0]
    for more in frames[1:]:
        union = union.unionByName(more)
    return union


def _manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


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


def _diff(spark: SparkSession, lake: Lake, previous: Path, shards: list[shard_export.ShardInfo], out: Path,
          kind: str) -> tuple[int, int]:
    """Write diff.json/diff.parquet of ``out`` against the published ``previous``; (removed, added).
    The removed samples' rows come to the driver: a diff holds what left, not the release."""
    old, new = _published(spark, previous), _current(spark, out).select("uid")
    gone = _removal_reasons(spark, lake, old.join(new, "uid", "left_anti"))
    rows = (
        gone.select("shard", "key", F.sha2("uid", 256).alias("uid_sha256"), "reason")
        .toArrow().cast(_DIFF_SCHEMA).sort_by([("shard", "ascending"), ("key", "ascending")])
    )
    pq.write_table(rows, out / DIFF_ROWS)
    added = new.join(old.select("uid"), "uid", "left_anti").count()
    old_manifest = _manifest(previous)
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
    (out / DIFF).write_text(json.dumps(diff, indent=2, sort_keys=True))
    return rows.num_rows, added


def write_members(out: Path) -> int:
    """members.parquet from the shard files, a shard at a time; how many samples there are."""
    samples = 0
    with pq.ParquetWriter(out / MEMBERS, _MEMBERS_SCHEMA) as writer:
        writer.write_table(_MEMBERS_SCHEMA.empty_table())  # a version without samples still has the file
        for rows in shard_members(out):
            writer.write_table(rows)
            samples += rows.num_rows
    return samples


def _write_version(spark: SparkSession, lake: Lake, config: ReleaseConfig, version: int, kind: str,
                   shards: list[shard_export.ShardInfo], out: Path, previous: Path | None,
                   source_versions: dict[str, int], rules: dict, lineage: Lineage) -> ReleaseVersion:
    samples = write_members(out)
    removed, added = (0, samples) if previous is None else _diff(spark, lake, previous, shards, out, kind)
    now = dt.datetime.now(dt.timezone.utc)
    manifest = {
        "release": config.name, "version": version, "kind": kind, "variant": config.variant,
        "previous_version": version - 1 if previous is not None else None,
        "created_at": now.isoformat(timespec="seconds"), "run_id": lineage.run_id,
        "samples": samples, "source_versions": source_versions, "rules": rules,
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
        "samples": samples, "shards": len(shards), "removed": removed, "added": added,
        "source_versions": json.dumps(source_versions, sort_keys=True), "rules": json.dumps(rules, sort_keys=True),
        "path": _relative(lake, out), "created_at": now, "run_id": lineage.run_id,
    }
    lake.append(RELEASES, pa.Table.from_pylist([row], schema=RELEASES.schema), lineage)
    if previous is not None:
        _retire(lake, config.name, previous, lineage)
    return ReleaseVersion(config.name, version, kind, str(out), samples, len(shards), removed, added)


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
    previous = version_dir(lake, config.name, last["version"]) if last else None
    if previous is None or not (previous / MEMBERS).exists():
        if mode == "rerelease":
            raise ReleaseError(f"release {config.name} has no previous version to re-release")
        return _snapshot(spark, lake, config, 1 if last is None else last["version"] + 1, previous,
                         source_versions, rules, lineage, image_ext)
    curated = read_table(spark, lake, CURATED, version=source_versions.get("curated"), columns=["uid"],
                         where={"variant": [config.variant]})
    held = _current(spark, previous)
    if mode == "rerelease":
        drop = held.join(_uids(spark, lake, REMOVALS, BLOCKLIST_MATCHES), "uid", "left_semi")
    else:
        if not curated.join(held, "uid", "left_anti").isEmpty():
            _check_drop(spark, config, last, previous, curated, confirmed_by)
            return _snapshot(spark, lake, config, last["version"] + 1, previous, source_versions,
                             {**rules, "confirmed_by": confirmed_by}, lineage, image_ext)
        drop = held.join(curated, "uid", "left_anti")
    amended = held.count() != pq.read_metadata(previous / MEMBERS).num_rows
    if drop.isEmpty() and not amended:
        return None
    _check_drop(spark, config, last, previous, held.join(drop.select("uid"), "uid", "left_anti"), confirmed_by)
    return _rerelease(spark, lake, config, previous, drop, last["version"] + 1, source_versions,
                      {**rules, "confirmed_by": confirmed_by}, lineage)


def _check_drop(spark: SparkSession, config: ReleaseConfig, last: dict, previous: Path, kept: DataFrame,
                confirmed_by: str | None) -> None:
    """Refuse a version that drops too much of the published one (an over-broad removal, a curation
    gone wrong) until a person confirms it."""
    published = pq.read_metadata(previous / MEMBERS).num_rows
    if confirmed_by or not published:
        return
    dropped = _published(spark, previous).join(kept.select("uid"), "uid", "left_anti").count()
    if dropped <= config.max_auto_drop_fraction * published:
        return
    raise ReleaseNeedsConfirmation(
        f"{config.name} v{last['version'] + 1} would drop {dropped:,} of the {published:,} samples of "
        f"v{last['version']} ({dropped / published:.1%}), more than release.max_auto_drop_fraction "
        f"({config.max_auto_drop_fraction:.1%}); check the removals, then confirm: "
        "pairlake release rerelease --confirmed-by WHO")


def _snapshot(spark: SparkSession, lake: Lake, config: ReleaseConfig, version: int, previous: Path | None,
              source_versions: dict[str, int], rules: dict, lineage: Lineage, image_ext: str) -> ReleaseVersion:
    out = _fresh_dir(lake, config.name, version)
    shards = shard_export_job.export_variant_shards(
        spark, lake, config.variant, out, config.samples_per_shard, image_ext,
        curated_version=source_versions.get("curated"), images_version=source_versions.get("images"))
    return _write_version(spark, lake, config, version, "snapshot", shards, out, previous, source_versions, rules,
                          lineage)


def _rerelease(spark: SparkSession, lake: Lake, config: ReleaseConfig, previous: Path, drop: DataFrame, version: int,
               source_versions: dict[str, int], rules: dict, lineage: Lineage) -> ReleaseVersion:
    """The previous version's shards less ``drop`` (shard, key, uid): the shards that lose samples
    are rewritten in parallel, one Spark task each; the others are shared, no bytes copied."""
    out = _fresh_dir(lake, config.name, version)
    shards = shard_export_job.rewrite_shards(spark, drop, previous, out)
    changed = {info.shard for info in shards}
    for tar in sorted(previous.glob("[0-9]*.tar")):
        if tar.stem not in changed:
            for name in (tar.name, f"{tar.stem}.parquet", f"{tar.stem}_stats.json"):
                os.link(previous / name, out / name)
            stats = json.loads((out / f"{tar.stem}_stats.json").read_text())
            shards.append(shard_export.ShardInfo(tar.stem, str(out / tar.name), stats["count"], stats["bytes"],
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
            tar = lake.path(row["path"])  # relative to the lake root (absolute in older lakes)
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
