"""The removal fence: a writer that read the lake before a removal, and commits after it, cannot
write the removed pair back: not by its uid, not under a new caption of its URL, not as its bytes.
Raced for real: the purge lands while the writer waits at its commit point, then a byte scan of the
lake root finds nothing of the removed pair."""

import datetime as dt
import hashlib

import pyarrow as pa
import pytest

from infra.delta_store import Lake, Lineage
from infra.removal_fence import RemovedWhileWriting, check_commit, pinned_version
from infra.spark import write_table
from infra.tables import CANDIDATES, IMAGES
from spark_jobs import optout
from tests.lake_scan import files_holding

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)
URL = "http://photos.example/me.jpg"
BYTES = b"\xff\xd8 the removed picture's own bytes \xff\xd9"


def _candidates(rows):
    return pa.Table.from_pylist(
        [{"uid": uid, "url": url, "caption": uid, "page_url": "http://p.example/", "crawl_id": "c", "warc_file": "w",
          "record_offset": 0} for uid, url in rows], schema=CANDIDATES.schema)


def _images(rows):
    return pa.Table.from_pylist(
        [{"uid": uid, "url": url, "final_url": url, "warc_file": "w", "status": "ok", "retryable": False,
          "attempts": 1, "fetched_at": NOW, "image": data, "sha256": hashlib.sha256(data).hexdigest(),
          "md5": hashlib.md5(data).hexdigest()} for uid, url, data in rows], schema=IMAGES.schema)


@pytest.fixture
def lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.replace_partitions(CANDIDATES, _candidates([("x", URL), ("keep", "http://other.example/k.jpg")]), ["w"],
                            Lineage())
    lake.replace_partitions(IMAGES, _images([("x", URL, BYTES), ("keep", "http://other.example/k.jpg", b"KEEP")]),
                            ["w"], Lineage())
    return lake


def _remove(lake, tmp_path, kind="url", value=URL):
    request = optout.validate({"kind": kind, "value": value, "requester": "a", "reason": "b"}, "r1")
    found = optout.find_matches(lake, request)
    lineage = Lineage(run_id="removal")
    optout.record_removals(lake, request, found, lineage)
    optout.extend_removal_blocklist(lake, request, found, lineage)
    optout.purge_tables(lake, found, lineage)


def test_a_writer_that_read_before_a_removal_cannot_commit_the_pair_back(lake, tmp_path):
    writer = Lineage(run_id="ingest", removals_version=pinned_version(lake))
    held = _images([("x", URL, BYTES), ("keep", "http://other.example/k.jpg", b"KEEP")])  # what it read
    _remove(lake, tmp_path)
    with pytest.raises(RemovedWhileWriting, match="commit to images refused: 1 of its rows"):
        lake.replace_partitions(IMAGES, held, ["w"], writer)
    # A new caption of the removed URL (a new uid) and the removed bytes under a new URL: refused too.
    with pytest.raises(RemovedWhileWriting):
        lake.replace_partitions(CANDIDATES, _candidates([("y", URL)]), ["w"], writer)
    with pytest.raises(RemovedWhileWriting):
        lake.replace_partitions(IMAGES, _images([("z", "http://mirror.example/c.jpg", BYTES)]), ["w"], writer)
    assert files_holding(tmp_path / "lake", BYTES) == []
    # A writer that started after the removal read the list already: nothing to check.
    later = Lineage(run_id="later", removals_version=pinned_version(lake))
    lake.replace_partitions(IMAGES, _images([("keep", "http://other.example/k.jpg", b"KEEP")]), ["w"], later)


def _held_back(gate: str):
    """A Spark task that hands over its rows, then waits for ``gate`` before it finishes: the job
    is held just before its commit while the test lands a purge."""
    def run(batches):
        import os
        import time

        for batch in batches:
            yield batch
        open(gate + ".waiting", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.05)

    return run


def test_a_spark_write_held_at_its_commit_point_while_a_purge_lands(lake, tmp_path, spark):
    import threading

    from pyspark.sql.pandas.types import from_arrow_schema

    writer = Lineage(run_id="ingest", removals_version=pinned_version(lake))
    read = _images([("x", URL, BYTES), ("keep", "http://other.example/k.jpg", b"KEEP")])  # what it read
    gate = str(tmp_path / "gate")
    df = spark.createDataFrame(read.to_pandas()).coalesce(1).mapInArrow(_held_back(gate),
                                                                       from_arrow_schema(IMAGES.schema))
    outcome = {}

    def write():
        # Spark looks data sources up in the JVM thread's active session: make it this one.
        spark._jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
        try:
            write_table(df, lake, IMAGES, writer, replace_partitions=["w"])
        except Exception as exc:  # Spark wraps the driver-side refusal
            outcome["error"] = str(exc)

    thread = threading.Thread(target=write)
    thread.start()
    while not (tmp_path / "gate.waiting").exists():
        assert thread.is_alive(), outcome
        thread.join(0.05)
    _remove(lake, tmp_path)  # the purge lands while the write waits
    (tmp_path / "gate").touch()
    thread.join(300)
    assert "commit to images refused" in outcome.get("error", "")
    assert files_holding(tmp_path / "lake", BYTES) == []  # neither committed nor left on disk
    assert lake.read(IMAGES)["uid"].to_pylist() == ["keep"]


def test_the_fence_holds_one_piece_of_a_commit_at_a_time(lake, tmp_path):
    """A commit of Spark-written files is checked batch by batch: the committing process never
    holds a whole run's rows (issue E: its memory must not grow with the run)."""
    import weakref

    writer = Lineage(run_id="ingest", removals_version=pinned_version(lake))
    _remove(lake, tmp_path)
    alive: list[weakref.ref] = []

    def pieces():
        for i in range(5):
            # The consumer's loop variable holds the last piece until the next one arrives.
            assert all(ref() is None for ref in alive[:-1]), "an earlier piece is still held"
            piece = _images([(f"u{i}", f"http://other.example/{i}.jpg", b"%d" % i)])
            alive.append(weakref.ref(piece))
            yield piece
            del piece
        yield _images([("x2", URL, b"new bytes of the removed URL")])

    with pytest.raises(RemovedWhileWriting, match="1 of its rows"):
        check_commit(lake, IMAGES, pieces(), writer.removals_version)
