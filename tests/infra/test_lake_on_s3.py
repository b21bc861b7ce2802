"""Delta tables in a bucket of a real S3-compatible server (SeaweedFS on 127.0.0.1): Spark writes
and reads them through the data source, concurrent committers all land, credentials stay in the
environment, and a store that does not answer is one line."""

import os
import pickle
import threading

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from infra import lake_storage
from infra.config import StorageOptions
from infra.delta_store import Lake, LakeError, Lineage
from infra.local_services import free_port
from infra.s3_server import SECRET_KEY, LocalS3Server
from infra.spark import read_table, write_table
from infra.tables import STAGE_STATS


def _frame(spark, n: int, parts: int = 3):
    return spark.range(0, n, numPartitions=4).selectExpr(
        "'s' as stage", f"cast(id % {parts} as string) as partition", "cast(id as string) as metric", "id as value")


def test_spark_writes_reads_and_replaces_partitions_of_a_table_in_a_bucket(spark, s3_lake):
    assert write_table(_frame(spark, 3000), s3_lake, STAGE_STATS, Lineage(run_id="r1"), replace_partitions=["0", "1", "2"]) == 0
    write_table(_frame(spark, 300).where("partition = '1'"), s3_lake, STAGE_STATS, Lineage(run_id="r2"),
                replace_partitions=["1"])
    counts = {r["partition"]: r["count"] for r in read_table(spark, s3_lake, STAGE_STATS).groupBy("partition").count().collect()}
    assert counts == {"0": 1000, "1": 100, "2": 1000}
    assert read_table(spark, s3_lake, STAGE_STATS, version=0, partitions=["1"], columns=["value"]).count() == 1000
    assert s3_lake.lineage(STAGE_STATS, 1).run_id == "r2"
    # The bytes are objects in the bucket, under the table's prefix; nothing landed on local disk.
    fs, base = s3_lake.filesystem
    keys = [i.path for i in fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]
    assert any(k.startswith(f"{base}/{STAGE_STATS.name}/partition=1/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith(f"{base}/{STAGE_STATS.name}/_delta_log/") for k in keys)
    assert not os.path.exists("s3:")


def test_concurrent_commits_to_one_partition_all_land(s3_lake):
    rows = pa.table({"stage": ["s"] * 10, "partition": ["p"] * 10, "metric": ["m"] * 10, "value": list(range(10))})
    s3_lake.append(STAGE_STATS, rows, Lineage(run_id="first"))
    errors: list[BaseException] = []

    def commit(i: int) -> None:
        try:
            # Each thread opens the lake itself, as separate writers would.
            Lake(s3_lake.root, s3_lake.storage).append(STAGE_STATS, rows, Lineage(run_id=f"w{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert s3_lake.version(STAGE_STATS) == 4
    assert s3_lake.read(STAGE_STATS).num_rows == 50
    assert {Lineage.from_commit(c).run_id for c in s3_lake.history(STAGE_STATS)} == {"first", "w0", "w1", "w2", "w3"}


def test_credentials_stay_in_the_environment(spark, s3_lake):
    write_table(_frame(spark, 30), s3_lake, STAGE_STATS, Lineage(), replace_partitions=["0", "1", "2"])
    frame = read_table(spark, s3_lake, STAGE_STATS)
    plan = frame._jdf.queryExecution().toString()
    assert SECRET_KEY not in plan
    assert SECRET_KEY not in lake_storage.to_json(s3_lake.storage)
    assert SECRET_KEY.encode() not in pickle.dumps(s3_lake)  # as shipped in a Spark task's closure
    assert s3_lake.storage_options["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY  # read from the environment
    assert s3_lake.storage_options["conditional_put"] == "etag"


def test_a_store_that_does_not_answer_is_one_line():
    lake = Lake("s3://bucket/lake", StorageOptions(endpoint=f"http://127.0.0.1:{free_port()}", allow_http=True,
                                                   addressing_style="path", region="us-east-1"))
    with pytest.raises(LakeError, match=r"^lake root s3://bucket/lake is not writable: ") as raised:
        lake.ensure_writable()
    assert "\n" not in str(raised.value)


def test_a_bucket_that_does_not_exist_is_one_line(s3_endpoint):
    lake = Lake("s3://no-such-bucket/lake", s3_endpoint.storage_options())
    with pytest.raises(LakeError, match=r"^lake root s3://no-such-bucket/lake: bucket no-such-bucket does not exist$"):
        lake.ensure_writable()


def test_the_local_server_takes_writes_in_many_buckets_whatever_the_free_disk(s3_endpoint):
    """Each bucket is a SeaweedFS collection that grows 7 volumes on its first write; with the
    number of volumes derived from the free disk (-volume.max=0), 24 GB free here refused the 13th
    bucket's first write with an HTTP 500, and S3 tests failed by where they ran in the suite."""
    for i in range(30):
        s3_endpoint.create_bucket(f"many-{i:02d}")
        fs, base = Lake(f"s3://many-{i:02d}/lake", s3_endpoint.storage_options()).filesystem
        with fs.open_output_stream(f"{base}/part.bin") as out:  # bytes: an empty object takes no volume
            out.write(b"x" * 4096)


def test_a_versioned_bucket_is_refused_at_start(s3_endpoint, s3_lake):
    """A versioned bucket would keep a removed sample's bytes as noncurrent versions: refused."""
    import botocore.session

    bucket = s3_lake.root.split("/")[2]
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3_endpoint.url, region_name=s3_endpoint.region,
        aws_access_key_id=s3_endpoint.access_key, aws_secret_access_key=s3_endpoint.secret_key)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    with pytest.raises(LakeError, match=rf"^lake root {s3_lake.root}: bucket {bucket} has versioning enabled: "):
        s3_lake.ensure_writable()


def _held_at(gate):
    """A Spark task that hands over its rows only once ``gate`` exists, after saying it waits."""
    def run(batches):
        import os
        import time

        open(str(gate) + ".waiting", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.05)
        yield from batches

    return run


def test_the_store_stopping_mid_write_is_one_line_commits_nothing_and_a_rerun_heals(spark, tmp_path):
    from pyspark.sql.pandas.types import from_arrow_schema

    server = LocalS3Server(tmp_path / "s3")
    endpoint = server.start()
    try:
        endpoint.create_bucket("outage")
        lake = Lake("s3://outage/lake", endpoint.storage_options())
        write_table(_frame(spark, 300), lake, STAGE_STATS, Lineage(run_id="before"), replace_partitions=["0", "1", "2"])
        gate = tmp_path / "gate"
        held = _frame(spark, 3000).mapInArrow(_held_at(gate), from_arrow_schema(STAGE_STATS.schema))
        outcome: dict[str, BaseException] = {}

        def write() -> None:
            spark._jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
            try:
                write_table(held, lake, STAGE_STATS, Lineage(run_id="during"), replace_partitions=["0", "1", "2"])
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcome["error"] = exc

        thread = threading.Thread(target=write)
        thread.start()
        while not (tmp_path / "gate.waiting").exists():
            assert thread.is_alive(), outcome
            thread.join(0.05)
        server.stop()  # the store goes away while the tasks hold their rows
        gate.touch()
        thread.join(300)
        error = outcome.get("error")
        assert isinstance(error, LakeError), error
        assert str(error).startswith("lake s3://outage/lake cannot be read or written: ") and "\n" not in str(error)

        server.start()  # the same data and ports
        assert lake.version(STAGE_STATS) == 0 and lake.read(STAGE_STATS).num_rows == 300  # nothing committed
        write_table(_frame(spark, 3000), lake, STAGE_STATS, Lineage(run_id="rerun"), replace_partitions=["0", "1", "2"])
        clean = Lake(str(tmp_path / "clean"))
        write_table(_frame(spark, 3000), clean, STAGE_STATS, Lineage(run_id="clean"), replace_partitions=["0", "1", "2"])
        order = [("partition", "ascending"), ("metric", "ascending")]
        assert lake.read(STAGE_STATS).sort_by(order).equals(clean.read(STAGE_STATS).sort_by(order))
    finally:
        server.stop()


def test_registered_heads_and_the_report_live_in_the_bucket(s3_lake):
    import numpy as np

    from gpu_jobs import tagging
    from gpu_jobs.embedding_heads import load_head, save_head, train_head
    from infra import lake_layout
    from orchestration import report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    head, _ = train_head(x, (x[:, 0] > 0).astype(int), "mine", "ViT-B-32", "linear", 0.2, 0)
    fs, _ = s3_lake.filesystem
    location = save_head(head, s3_lake.folder(lake_layout.HEADS))
    assert location == f"{s3_lake.location(lake_layout.HEADS)}/mine.pt"
    with tagging.registered_heads(s3_lake) as registered:
        loaded = load_head(registered / "mine.pt", device="cpu")
    assert not registered.exists()  # the local copy is gone after the block
    assert loaded.spec == head.spec
    assert all(np.array_equal(a.detach(), b.detach()) for a, b in zip(head.state_dict().values(), loaded.state_dict().values()))

    uri = report.write_report(report.build_funnel(s3_lake, 0.28), s3_lake)  # of a lake with no tables yet
    assert uri == f"{s3_lake.root}/reports/funnel.html"
    with fs.open_input_file(s3_lake.location(lake_layout.report("funnel.html"))) as fh:
        assert b"pairlake funnel" in fh.read()
