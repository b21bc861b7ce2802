"""Scoring holds one Arrow batch of images per task, whatever the size of the run: a Python
worker's peak RSS after scoring 4x the images stays within 1.2x of its peak after 1x."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from infra.delta_store import Lake, Lineage
from spark_jobs.clip_scores_job import score_partitions
from tests.imaging import captions_for, images_table
from tests.spark_jobs.scoring_lake import random_checkpoint_config, write_scoring_lake

BATCH_ROWS = 8


def big_jpeg() -> bytes:
    """~1 MB of noise: the image bytes of a run dwarf a worker's baseline if a task holds them all."""
    pixels = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def lake_of(root, n: int, payload: bytes) -> tuple[Lake, list[str]]:
    images = images_table(n)
    images = images.set_column(images.schema.get_field_index("image"), "image", pa.array([payload] * n, pa.binary()))
    return write_scoring_lake(root, images, captions_for(images))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def status_mb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(f"{field}:"))


@pytest.mark.slow
def test_a_run_four_times_larger_grows_neither_the_driver_nor_the_workers(spark, tmp_path):
    config = random_checkpoint_config(tmp_path)
    payload = big_jpeg()
    assert len(payload) > 700_000
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
    try:
        sizes = (8, 100, 400)  # a warm-up (workers load the model), then 100 MB and 400 MB of images
        # Built first: what building them leaves in this process is the same for every run below.
        lakes = [lake_of(tmp_path / f"lake-{n}", n, payload) for n in sizes]
        pa.default_memory_pool().release_unused()
        driver, workers = [], []
        for n, (lake, partitions) in zip(sizes, lakes):
            reset_peak()
            before = status_mb("VmRSS")
            outcome = score_partitions(spark, lake, partitions, config, Lineage(), threshold=0.0)
            driver.append(status_mb("VmHWM") - before)  # what the run added at its peak
            assert sum(c["scored"] for c in outcome.counts.values()) == n
            workers.append(outcome.worker_peak_rss_mb)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    # The step process (here the test's) never holds images; a worker holds one batch of them.
    # (With a batch of a whole file, workers peaked at 998, 1168, 1698 MB: this fails.)
    assert driver[2] <= driver[1] + 50, driver
    assert workers[2] <= 1.2 * workers[1], workers
