"""The kept-set rule in Spark SQL: above the threshold in float32, never NaN."""

import numpy as np
from pyspark.sql import functions as F

from spark_jobs.kept_set import kept


def test_kept_is_strictly_above_the_threshold_and_never_nan(spark):
    values = [0.1, float(np.float32(0.28)), 0.2800001, 0.3, float("nan")]
    frame = spark.createDataFrame([(v,) for v in values], "similarity float")
    got = [row[0] for row in frame.select(kept(F.col("similarity"), 0.28)).collect()]
    assert got == [False, False, True, True, False]
