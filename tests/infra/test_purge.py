"""Purging removed rows: gone from the current version, from every file and from the log."""

from pathlib import Path

import pyarrow as pa
import pytest

from infra.delta_store import Lake, LakeError, Lineage
from infra.purge import purge_uids, vacuum_history
from infra.tables import IMAGES
from tests.lake_scan import files_holding


def _rows(uids: list[str], warc_file: str) -> pa.Table:
    n = len(uids)
    return pa.Table.from_pylist(
        [{"uid": u, "url": f"http://img.example/{u}/secret.jpg", "warc_file": warc_file, "status": "ok",
          "retryable": False, "attempts": 1, "fetched_at": pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py(),
          "image": f"BYTES-OF-{u}".encode() * 4, "sha256": u * 2} for u in uids],
        schema=IMAGES.schema,
    ) if n else IMAGES.schema.empty_table()


@pytest.fixture(params=["folder", "bucket"])
def lake(request, tmp_path) -> Lake:
    """A lake in a local folder, or in a bucket of the real local S3 server."""
    return Lake(str(tmp_path)) if request.param == "folder" else request.getfixturevalue("s3_lake")


def test_purge_removes_rows_files_and_log_entries(lake):
    """On a disk and on object storage alike: every object of the lake is scanned afterwards."""
    lake.replace_partitions(IMAGES, _rows(["a1", "a2"], "w1"), ["w1"], Lineage())
    lake.replace_partitions(IMAGES, _rows(["b1"], "w2"), ["w2"], Lineage())
    lake.replace_partitions(IMAGES, _rows(["a1", "a2", "a3"], "w1"), ["w1"], Lineage())  # an older copy of a1 stays
    needles = [b"http://img.example/a1/secret.jpg", b"BYTES-OF-a1"]
    assert all(files_holding(lake, n) for n in needles)  # the scan sees them before

    result = purge_uids(lake, IMAGES, ["a1"], Lineage(run_id="removal"), partitions=["w1"])

    assert result.rows_deleted == 1 and result.files_vacuumed >= 2 and result.log_entries_removed >= 3
    assert sorted(lake.read(IMAGES)["uid"].to_pylist()) == ["a2", "a3", "b1"]
    for needle in needles:
        assert files_holding(lake, needle) == []
    with pytest.raises(LakeError, match="purged by a removal"):
        lake.read(IMAGES, version=0)  # time travel before the purge is gone, by design
    lake.append(IMAGES, _rows(["c1"], "w3"), Lineage())  # and the table goes on as usual
    assert lake.read(IMAGES).num_rows == 4


def test_purge_without_matches_still_clears_older_versions(tmp_path):
    lake = Lake(str(tmp_path))
    lake.replace_partitions(IMAGES, _rows(["a1"], "w1"), ["w1"], Lineage())
    lake.replace_partitions(IMAGES, _rows(["a2"], "w1"), ["w1"], Lineage())  # a1 now only in history
    assert files_holding(tmp_path, b"BYTES-OF-a1")
    result = purge_uids(lake, IMAGES, ["a1"], Lineage())
    assert result.rows_deleted == 0
    assert files_holding(tmp_path, b"BYTES-OF-a1") == []
    assert Path(lake.uri(IMAGES), "_delta_log", "_last_checkpoint").exists()


def test_ordinary_vacuum_keeps_history_within_its_retention(tmp_path):
    lake = Lake(str(tmp_path))
    lake.replace_partitions(IMAGES, _rows(["a1"], "w1"), ["w1"], Lineage())
    lake.replace_partitions(IMAGES, _rows(["a2"], "w1"), ["w1"], Lineage())
    assert vacuum_history(lake, IMAGES, 168, Lineage()) == 0  # a week: nothing is that old
    assert lake.read(IMAGES, version=0)["uid"].to_pylist() == ["a1"]  # time travel still works
    assert vacuum_history(lake, IMAGES, 0, Lineage()) == 1  # no retention: the replaced file goes
    assert lake.read(IMAGES)["uid"].to_pylist() == ["a2"]
