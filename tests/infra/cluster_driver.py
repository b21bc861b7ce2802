"""Driver for the standalone-cluster test: writes and reads through the data source on MASTER,
then writes once more while the Python worker of one task dies on its first attempt."""

import os
import sys
from pathlib import Path

from infra.config import SparkConfig
from infra.delta_store import Lake, Lineage
from infra.spark import read_table, spark_session, write_table
from infra.tables import STAGE_STATS

master, root = sys.argv[1], sys.argv[2]
lake = Lake(root)
with spark_session(SparkConfig(master=master, app_name="pairlake-cluster-test")) as spark:
    assert spark.sparkContext.master == master
    df = spark.range(0, 20000, numPartitions=4).selectExpr(
        "'s' as stage", "cast(id % 2 as string) as partition", "cast(id as string) as metric", "id as value"
    )
    write_table(df, lake, STAGE_STATS, Lineage(run_id="cluster-run"), replace_partitions=["0", "1"])
    write_table(df, lake, STAGE_STATS, Lineage(run_id="cluster-run-2"), replace_partitions=["0", "1"])
    marker = str(Path(root).parent / "worker-died")

    def die_once(batches):
        from pyspark import TaskContext

        context = TaskContext.get()
        if context.partitionId() == 0 and context.attemptNumber() == 0:
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies in the middle of the task
        yield from batches

    write_table(df.mapInArrow(die_once, df.schema), lake, STAGE_STATS, Lineage(run_id="cluster-run-3"),
                replace_partitions=["0", "1"])
    counts = {r["partition"]: r["count"] for r in read_table(spark, lake, STAGE_STATS).groupBy("partition").count().collect()}
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()
print(f"counts={counts} executors={executors}")
