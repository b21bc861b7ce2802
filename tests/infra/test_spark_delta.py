"""The Spark data source over delta-rs: executors write Parquet, the driver commits once."""

import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from infra.config import ConfigError, SparkConfig
from infra.delta_store import Lake, Lineage
from infra.spark import _project_zip, build_spark_session, read_table, write_table
from infra.spark_delta import _DeltaWriter
from infra.tables import STAGE_STATS


def stats_frame(spark, n: int, stages: int = 3):
    return spark.range(0, n, numPartitions=4).selectExpr(
        "'s' as stage", f"cast(id % {stages} as string) as partition", "cast(id as string) as metric", "id as value"
    )


def data_files(table_dir: Path) -> set[str]:
    return {str(p.relative_to(table_dir)) for p in table_dir.rglob("*.parquet")}


def test_write_commits_once_with_lineage_and_replaces_partitions(spark, tmp_path):
    lake = Lake(str(tmp_path))
    lineage = Lineage(run_id="r1", asset_key="stage_stats", partition_keys=("0", "1", "2"), upstream={"x": 2})
    assert write_table(stats_frame(spark, 3000), lake, STAGE_STATS, lineage, replace_partitions=["0", "1", "2"]) == 0
    assert lake.lineage(STAGE_STATS, 0) == lineage
    # Rewriting one partition with fewer rows: one more commit, the other partitions untouched.
    smaller = stats_frame(spark, 300).where("partition = '1'")
    assert write_table(smaller, lake, STAGE_STATS, Lineage(run_id="r2"), replace_partitions=["1"]) == 1
    counts = {r["partition"]: r["count"] for r in read_table(spark, lake, STAGE_STATS).groupBy("partition").count().collect()}
    assert counts == {"0": 1000, "1": 100, "2": 1000}
    # The same rewrite again is idempotent.
    write_table(smaller, lake, STAGE_STATS, Lineage(run_id="r3"), replace_partitions=["1"])
    assert read_table(spark, lake, STAGE_STATS).count() == 2100
    # Time travel and partition pruning through the reader.
    assert read_table(spark, lake, STAGE_STATS, version=0, partitions=["1"]).count() == 1000


def test_local_python_workers_fork_from_the_daemon_that_preloaded_delta_io(spark):
    """infra/spark_worker_daemon.py: each new worker otherwise imports pyarrow's datasets, pandas
    and the Delta source itself (~2 CPU-s here)."""

    def probe(batches):
        import sys

        for batch in batches:
            yield pa.RecordBatch.from_pylist([{"daemon": sys.modules["__main__"].__spec__.name}] * batch.num_rows)

    rows = spark.range(4, numPartitions=2).mapInArrow(probe, "daemon string").collect()
    assert {r["daemon"] for r in rows} == {"infra.spark_worker_daemon"}


def test_tables_written_by_spark_open_in_independent_readers(spark, tmp_path):
    lake = Lake(str(tmp_path))
    write_table(stats_frame(spark, 999), lake, STAGE_STATS, Lineage(), replace_partitions=["0", "1", "2"])
    frame = pl.read_delta(lake.uri(STAGE_STATS))
    assert frame.height == 999 and frame["value"].sum() == sum(range(999))
    assert lake.read(STAGE_STATS).num_rows == 999


def test_rows_outside_the_partitions_being_replaced_commit_nothing_and_leave_no_files(spark, tmp_path):
    """As delta-rs writes refuse them (Lake.replace_partitions): a stray partition's rows would be
    added to it without replacing it, where a re-run would then duplicate them."""
    lake = Lake(str(tmp_path))
    write_table(stats_frame(spark, 300), lake, STAGE_STATS, Lineage(), replace_partitions=["0", "1", "2"])
    table_dir = Path(lake.uri(STAGE_STATS))
    before = data_files(table_dir)
    with pytest.raises(Exception, match=r"fall outside the partitions being replaced: \['2'\]"):
        write_table(stats_frame(spark, 300), lake, STAGE_STATS, Lineage(), replace_partitions=["0", "1"])
    assert lake.version(STAGE_STATS) == 0 and data_files(table_dir) == before


def test_partitioned_table_refuses_an_unnamed_full_overwrite(spark, tmp_path):
    with pytest.raises(ValueError, match="name the partitions"):
        write_table(stats_frame(spark, 10), Lake(str(tmp_path)), STAGE_STATS, Lineage())


def test_failed_task_commits_nothing_and_leaves_no_files(spark, tmp_path):
    lake = Lake(str(tmp_path))
    write_table(stats_frame(spark, 100), lake, STAGE_STATS, Lineage(), replace_partitions=["0", "1", "2"])
    table_dir = Path(lake.uri(STAGE_STATS))
    files_before = data_files(table_dir)

    def explode(batches):
        for batch in batches:
            if 77 in batch.column("value").to_pylist():
                raise RuntimeError("boom")
            yield batch

    failing = stats_frame(spark, 100).mapInArrow(explode, stats_frame(spark, 1).schema)
    with pytest.raises(Exception, match="boom"):
        write_table(failing, lake, STAGE_STATS, Lineage(run_id="bad"), replace_partitions=["0", "1", "2"])
    assert lake.version(STAGE_STATS) == 0
    # Spark kills the failed job's other tasks asynchronously; once they are gone, so are their files.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        spark.sparkContext.statusTracker().getActiveStageIds() or data_files(table_dir) != files_before
    ):
        time.sleep(0.2)
    assert data_files(table_dir) == files_before


def test_a_task_that_outlives_the_abort_removes_its_own_files(tmp_path):
    # The straggler case, without Spark's timing: the driver aborts, then a task finishes writing.
    lake = Lake(str(tmp_path))
    options = {"root": str(tmp_path), "table": STAGE_STATS.name}
    writer = _DeltaWriter(options, overwrite=False)
    writer.abort([])
    rows = pa.record_batch(
        {"stage": ["s"], "partition": ["0"], "metric": ["m"], "value": [1]}, schema=STAGE_STATS.schema
    )
    with pytest.raises(RuntimeError, match="aborted"):
        writer.write(iter([rows]))
    assert data_files(Path(lake.uri(STAGE_STATS))) == set()
    assert lake.version(STAGE_STATS) is None


@pytest.mark.slow
def test_standalone_cluster_master_and_workers_on_loopback(standalone_cluster, tmp_path):
    driver = Path(__file__).with_name("cluster_driver.py")
    driver_tmp = tmp_path / "driver-tmp"
    driver_tmp.mkdir()
    result = subprocess.run(
        [sys.executable, str(driver), standalone_cluster, str(tmp_path / "lake")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "TMPDIR": str(driver_tmp)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(driver_tmp.glob("pairlake-pyfiles-*")) == []  # the project zip went with its driver
    line = [l for l in result.stdout.splitlines() if l.startswith("counts=")][-1]
    assert "'0': 10000" in line and "'1': 10000" in line
    lake = Lake(str(tmp_path / "lake"))
    # The third write lost a worker mid-task: Spark ran the task again and the data source
    # committed once, every row once.
    assert (tmp_path / "worker-died").exists()
    assert lake.version(STAGE_STATS) == 2
    assert json.loads(lake.history(STAGE_STATS)[0]["pairlake.partition_keys"]) == []
    assert lake.lineage(STAGE_STATS).run_id == "cluster-run-3"
    rows = lake.read(STAGE_STATS)
    assert rows.num_rows == 20000 and len(set(rows["metric"].to_pylist())) == 20000


def test_executors_get_the_projects_code_and_model_configs_not_the_demos_weights():
    with zipfile.ZipFile(_project_zip()) as shipped:
        names = set(shipped.namelist())
    assert {"infra/spark_delta.py", "spark_jobs/download/libwebp.py", "gpu_jobs/model_configs/pairlake-demo-tiny.json"} <= names
    assert not [name for name in names if name.endswith(".pt") or "__pycache__" in name]


def test_a_master_nobody_answers_is_one_line_at_once():
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"no Spark master answers at 127.0.0.1:{port}") as raised:
        build_spark_session(SparkConfig(master=f"spark://127.0.0.1:{port}", app_name="nobody"))
    assert "\n" not in str(raised.value) and time.perf_counter() - started < 10  # Spark alone: ~80 s, a Java trace


def test_planning_a_read_or_commit_does_not_import_pandas():
    # Spark 4 plans a Python data source's reads and commits its writes in Python processes of its
    # own, which import this module: pyarrow.dataset (and pandas, which it imports) cost each ~0.6 CPU-s.
    code = ("import sys, infra.spark_delta, infra.delta_store; "
            "print(sorted(m for m in ('pandas', 'pyarrow.dataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
