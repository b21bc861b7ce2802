"""Releases on a small real lake: snapshot, in-place withdrawal, re-release with a diff that turns
an old copy into the new version byte for byte, and snapshots whose diffs cannot do that."""

import datetime as dt
import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.config import ReleaseConfig
from infra.delta_store import Lake, Lineage
from infra.tables import BLOCKLIST_MATCHES, CURATED, IMAGES, REMOVALS, SHARDS
from spark_jobs import release

# A tiny release: one removal is a large share of it, so the drop guard allows up to half.
CONFIG = ReleaseConfig(name="test-release", variant="safe", samples_per_shard=3, max_auto_drop_fraction=0.5)
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _lake(tmp_path, uids: list[str]) -> Lake:
    return _fill(Lake(str(tmp_path / "lake")), uids)


def _fill(lake: Lake, uids: list[str]) -> Lake:
    curated = [{"variant": "safe", "uid": u, "warc_file": "w", "url": f"http://x.example/{u}.jpg", "caption": f"cap {u}",
                "similarity": 0.5, "model_id": "m", "cluster_size": 1} for u in uids]
    lake.overwrite(CURATED, pa.Table.from_pylist(curated, schema=CURATED.schema), Lineage())
    images = [{"uid": u, "url": f"http://x.example/{u}.jpg", "warc_file": "w", "status": "ok", "retryable": False,
               "attempts": 1, "fetched_at": NOW, "image": f"jpeg-{u}".encode() * 10} for u in uids]
    lake.replace_partitions(IMAGES, pa.Table.from_pylist(images, schema=IMAGES.schema), ["w"], Lineage())
    return lake


def _make(spark, lake: Lake, mode: str = "auto", config: ReleaseConfig = CONFIG, confirmed_by: str | None = None):
    return release.make_release(spark, lake, config, {"rule": 1}, {"curated": lake.version(CURATED)}, Lineage(run_id="r"),
                                mode=mode, confirmed_by=confirmed_by)


def _tars(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("[0-9]*.tar"))}


def test_rerelease_diff_turns_an_old_copy_into_the_new_version(spark, tmp_path):
    uids = [f"u{i:02d}" for i in range(8)]
    lake = _lake(tmp_path, uids)
    v1 = _make(spark, lake)
    assert (v1.version, v1.kind, v1.samples, v1.shards) == (1, "snapshot", 8, 3)
    assert _make(spark, lake) is None  # nothing changed: no new version
    holder = tmp_path / "holder-v1"
    shutil.copytree(v1.path, holder)

    # An opt-out: the uid is withdrawn from the shard on disk at once; the release follows.
    lake.append(REMOVALS, pa.Table.from_pylist([{"uid": "u04", "request_id": "q1", "matched_by": "url",
                                                 "removed_at": NOW, "run_id": "r"}], schema=REMOVALS.schema), Lineage())
    assert release.withdraw(lake, {"u04"}, Lineage()) == ["test-release/v1:00001"]
    assert "u04" not in pa.concat_tables(release.shard_members(tmp_path / "lake/releases/test-release/v1"))["uid"].to_pylist()
    # A hash list names another sample.
    lake.overwrite(BLOCKLIST_MATCHES, pa.Table.from_pylist([{"uid": "u07", "warc_file": "w", "source": "list-a",
                                                            "kind": "image-md5"}], schema=BLOCKLIST_MATCHES.schema), Lineage())
    v2 = _make(spark, lake, mode="rerelease")
    assert (v2.version, v2.kind, v2.samples, v2.removed, v2.added) == (2, "rerelease", 6, 2, 0)

    diff = json.loads((tmp_path / "lake/releases/test-release/v2/diff.json").read_text())
    assert diff["applicable"] and diff["removed_by_reason"] == {"hash-list:list-a": 1, "opt-out": 1}
    assert [c["shard"] for c in diff["shards_changed"]] == ["00001", "00002"]
    assert "u04" not in (tmp_path / "lake/releases/test-release/v2/diff.parquet").read_bytes().decode("latin-1")
    removed = pq.read_table(tmp_path / "lake/releases/test-release/v2/diff.parquet").to_pylist()
    assert [(r["key"][:5], r["uid_sha256"], r["reason"]) for r in removed] == [
        ("00001", hashlib.sha256(b"u04").hexdigest(), "opt-out"),
        ("00002", hashlib.sha256(b"u07").hexdigest(), "hash-list:list-a")]

    assert release.apply_diff(tmp_path / "lake/releases/test-release/v2", holder) == ["00001", "00002"]
    assert _tars(holder) == _tars(tmp_path / "lake/releases/test-release/v2")
    with pytest.raises(release.ReleaseError, match="checksum differs"):
        release.apply_diff(tmp_path / "lake/releases/test-release/v2", holder)  # already applied

    # The superseded version keeps its record, not its shards; table shards lists what is on disk.
    assert sorted(p.name for p in (tmp_path / "lake/releases/test-release/v1").iterdir()) == [
        "manifest.json", "members.parquet"]
    assert set(lake.read(SHARDS)["export_id"].to_pylist()) == {"test-release/v2"}


def test_a_snapshot_that_adds_samples_has_a_diff_that_cannot_be_applied(spark, tmp_path):
    lake = _lake(tmp_path, ["a", "b", "c"])
    _make(spark, lake)
    holder = tmp_path / "holder"
    shutil.copytree(tmp_path / "lake/releases/test-release/v1", holder)
    lake = _lake(tmp_path, ["a", "c", "d", "e"])
    v2 = _make(spark, lake)
    assert (v2.kind, v2.removed, v2.added) == ("snapshot", 1, 2)
    with pytest.raises(release.ReleaseError, match="snapshot"):
        release.apply_diff(tmp_path / "lake/releases/test-release/v2/diff.json", holder)


def test_rerelease_needs_a_previous_version(spark, tmp_path):
    lake = _lake(tmp_path, ["a"])
    with pytest.raises(release.ReleaseError, match="no previous version"):
        _make(spark, lake, mode="rerelease")


def test_a_version_dropping_most_of_the_previous_one_needs_a_confirmation(spark, tmp_path):
    """An over-broad removal used to publish a release with 0 samples, unasked."""
    lake = _lake(tmp_path, ["a", "b", "c", "d"])
    _make(spark, lake)
    lake = _lake(tmp_path, ["a"])  # curation (or a removal) took three of four away
    with pytest.raises(release.ReleaseNeedsConfirmation, match=r"would drop 3 of the 4 samples of v1 \(75.0%\)"):
        _make(spark, lake)
    assert release.latest(lake, CONFIG.name)["version"] == 1
    v2 = _make(spark, lake, confirmed_by="ops on-call")
    assert (v2.version, v2.samples) == (2, 1)
    manifest = json.loads((tmp_path / "lake/releases/test-release/v2/manifest.json").read_text())
    assert manifest["rules"]["confirmed_by"] == "ops on-call"


def _version_files(lake: Lake, version: int) -> dict[str, bytes]:
    """A version's files as published, less what records when it was made."""
    folder = release.version_dir(lake, CONFIG.name, version)
    return {name: folder.read_bytes(name) for name in folder.names() if name != release.MANIFEST}


def test_a_release_in_a_bucket_is_the_release_in_a_folder(spark, tmp_path, s3_lake):
    """Snapshot, withdrawal, re-release (unchanged shards shared by server-side copies) and the
    diff applied from the bucket: the same bytes as on a local lake."""
    uids = [f"u{i:02d}" for i in range(8)]
    removal = pa.Table.from_pylist([{"uid": "u04", "request_id": "q1", "matched_by": "url", "removed_at": NOW,
                                     "run_id": "r"}], schema=REMOVALS.schema)
    lakes = {"folder": _lake(tmp_path, uids), "bucket": _fill(s3_lake, uids)}
    for lake in lakes.values():
        assert _make(spark, lake).shards == 3
    holder = tmp_path / "holder-v1"  # a user's copy of v1, downloaded from the bucket
    with s3_lake.local_copy("releases/test-release/v1") as copied:
        shutil.copytree(copied, holder)
    for lake in lakes.values():
        lake.append(REMOVALS, removal, Lineage())
        assert release.withdraw(lake, {"u04"}, Lineage()) == ["test-release/v1:00001"]
    assert _version_files(lakes["bucket"], 1) == _version_files(lakes["folder"], 1)
    for lake in lakes.values():
        lake.overwrite(BLOCKLIST_MATCHES, pa.Table.from_pylist([{"uid": "u07", "warc_file": "w", "source": "list-a",
                                                                "kind": "image-md5"}], schema=BLOCKLIST_MATCHES.schema),
                       Lineage())
        v2 = _make(spark, lake, mode="rerelease")
        assert (v2.version, v2.kind, v2.samples, v2.removed) == (2, "rerelease", 6, 2)
    assert v2.path == f"{s3_lake.root}/releases/test-release/v2"
    bucket_v2 = _version_files(lakes["bucket"], 2)
    assert bucket_v2 == _version_files(lakes["folder"], 2)
    assert sorted(bucket_v2) == sorted([f"{s}{ext}" for s in ("00000", "00001", "00002")
                                        for ext in (".parquet", ".tar", "_stats.json")]
                                       + ["diff.json", "diff.parquet", "members.parquet"])
    # v1 retired in the bucket too: its record stays, its shards are gone.
    assert release.version_dir(s3_lake, CONFIG.name, 1).names() == ["manifest.json", "members.parquet"]
    assert s3_lake.read(SHARDS).sort_by("shard")["path"].to_pylist() == [
        f"releases/test-release/v2/{s}.tar" for s in ("00000", "00001", "00002")]
    assert release.apply_diff(release.version_dir(s3_lake, CONFIG.name, 2), holder) == ["00001", "00002"]
    assert _tars(holder) == {name: data for name, data in bucket_v2.items() if name.endswith(".tar")}
