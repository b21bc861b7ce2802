"""CLIP scoring as Spark tasks: every "ok" image of the run gets a ``clip_scores`` row, one commit.

Each task scores the images of one data file of ``images`` (so of one WARC file) as they stream
in, a batch at a time; its captions come from that WARC file's ``candidates`` rows at the version
the driver pinned, so image bytes are never shuffled. The model is loaded once per Python worker
(Spark reuses workers across tasks) on the device the task was given: when executors advertise
GPUs (``spark.executor.resource.gpu.amount`` with a discovery script) and each task asks for one
(``spark.task.resource.gpu.amount``), the task runs on the GPU address Spark assigned it; on
CPU-only Spark the same code runs on the CPU. One scoring path, local mode or cluster.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import AccumulatorParam, TaskContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from infra.config import ClipConfig, StorageOptions
from infra.delta_store import Lake, Lineage
from infra.spark import read_table, write_table
from infra.tables import CANDIDATES, CLIP_SCORES, IMAGES
from spark_jobs.kept_set import kept

_CAPTION_FILES_KEPT = 4  # WARC files' captions a worker keeps (a task needs one at a time)
# A small run read as one task per core leaves cores idle at the end (8 files in 3 tasks on 2
# cores: one core scores 5/8 of the images); a worker keeps its model between tasks, so a task
# more costs little.
_TASKS_PER_CORE = 4


class _Counts(AccumulatorParam):
    """Rows scored per device, summed over tasks (a retried task counts again: for the record only)."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        for key, n in b.items():
            a[key] = a.get(key, 0) + n
        return a


class _Largest(AccumulatorParam):
    """The largest value any task reported (a worker's peak RSS)."""

    def zero(self, value: int) -> int:
        return 0

    def addInPlace(self, a: int, b: int) -> int:
        return max(a, b)


# Per Python worker: the loaded model per (model, device), and recently used WARC files' captions.
_models: dict[tuple, object] = {}
_captions: OrderedDict[tuple, dict[str, str]] = OrderedDict()


def _reset_peak_rss() -> None:
    """Start this task's peak RSS afresh (Linux: writing 5 to clear_refs resets VmHWM); elsewhere
    the peak is the worker process's since it started."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux


def _assigned_gpu(context: TaskContext | None) -> str | None:
    gpu = context.resources().get("gpu") if context is not None else None
    return gpu.addresses[0] if gpu is not None and gpu.addresses else None


def _model(config: ClipConfig, assigned_gpu: str | None):
    from gpu_jobs.clip_model import load_clip, resolve_device

    device = resolve_device(config.device, assigned_gpu)
    key = (config.model, config.pretrained, config.checkpoint, str(device))
    if key not in _models:
        _models.clear()  # one model per worker: a new config replaces the old one
        _models[key] = load_clip(config, device=device)
    return _models[key]


def _captions_of(lake: Lake, version: int, warc_file: str) -> dict[str, str]:
    key = (lake.root, version, warc_file)
    if key not in _captions:
        rows = lake.read(CANDIDATES, version=version, columns=["uid", "caption"], partitions=[warc_file])
        _captions[key] = dict(zip(rows["uid"].to_pylist(), rows["caption"].to_pylist()))
        while len(_captions) > _CAPTION_FILES_KEPT:
            _captions.popitem(last=False)
    _captions.move_to_end(key)
    return _captions[key]


def _scoring_task(root: str, storage: StorageOptions, captions_version: int, config: ClipConfig, devices, peak):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        from gpu_jobs.clip_scoring import score_images

        _reset_peak_rss()
        context = TaskContext.get()
        assigned = _assigned_gpu(context)
        clip = _model(config, assigned)
        if clip.device.type == "cpu" and context is not None:
            torch.set_num_threads(max(1, context.cpus()))  # the task's share of the executor's cores
        label = str(clip.device) if assigned is None else f"{clip.device} (spark gpu {assigned})"
        lake = Lake(root, storage)
        scored = 0
        for batch in batches:
            if not batch.num_rows:
                continue
            images = pa.Table.from_batches([batch])
            captions: dict[str, str] = {}
            for warc_file in pc.unique(images["warc_file"]).to_pylist():
                captions.update(_captions_of(lake, captions_version, warc_file))
            scores = score_images(images, captions, clip, config.batch_size, config.workers)
            scored += scores.num_rows
            yield from scores.to_batches()
        devices.add({label: scored})
        peak.add(_peak_rss_mb())

    return run


@dataclass(frozen=True)
class ScoringOutcome:
    version: int  # of clip_scores
    counts: dict[str, dict[str, int]]  # per WARC file: scored, above_threshold
    devices: dict[str, int]  # rows scored per device ("cuda:1 (spark gpu 1)", "cpu")
    mean_similarity: float
    worker_peak_rss_mb: int  # the largest peak RSS of a Python worker that scored


def score_partitions(
    spark: SparkSession, lake: Lake, partitions: list[str], config: ClipConfig, lineage: Lineage, threshold: float
) -> ScoringOutcome:
    """Score the "ok" images of ``partitions`` on Spark, replacing those partitions of clip_scores."""
    captions_version = lake.version(CANDIDATES)
    if captions_version is None:
        raise ValueError("table candidates does not exist yet: nothing to score")
    devices = spark.sparkContext.accumulator({}, _Counts())
    peak = spark.sparkContext.accumulator(0, _Largest())
    images = read_table(
        spark, lake, IMAGES, partitions=partitions, columns=["uid", "warc_file", "status", "image"], where={"status": ["ok"]},
        tasks_per_core=_TASKS_PER_CORE,
    )
    scored = images.mapInArrow(
        _scoring_task(lake.root, lake.storage, captions_version, config, devices, peak),
        from_arrow_schema(CLIP_SCORES.schema),
    )
    version = write_table(scored, lake, CLIP_SCORES, lineage, replace_partitions=partitions)
    similarity = F.col("similarity")
    per_file = (
        read_table(spark, lake, CLIP_SCORES, version=version, partitions=partitions, columns=["warc_file", "similarity"])
        .groupBy("warc_file")
        .agg(F.count("*").alias("scored"), F.sum(kept(similarity, threshold).cast("long")).alias("above"),
             F.sum(F.when(~F.isnan(similarity), similarity)).alias("total"))
        .collect()
    )
    counts = {p: {"scored": 0, "above_threshold": 0} for p in partitions}
    for row in per_file:
        counts[row["warc_file"]] = {"scored": row["scored"], "above_threshold": int(row["above"] or 0)}
    rows = sum(row["scored"] for row in per_file)
    mean = sum(row["total"] or 0.0 for row in per_file) / rows if rows else 0.0
    return ScoringOutcome(version, counts, dict(devices.value), mean, peak.value)
