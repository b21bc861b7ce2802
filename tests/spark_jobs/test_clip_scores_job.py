"""CLIP scoring and tagging as Spark tasks: in local mode, on a standalone cluster whose workers
each offer one (fake) GPU, and against the bare scoring and tagging functions."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from gpu_jobs.clip_model import ClipModelError, load_clip, model_identity
from gpu_jobs.clip_scoring import score_images
from gpu_jobs.embedding_format import embeddings_from_column
from gpu_jobs.tagging import tag_embeddings
from infra.delta_store import Lake, Lineage
from infra.tables import CANDIDATES, CLIP_SCORES, IMAGE_TAGS, IMAGES
from spark_jobs.clip_scores_job import score_partitions
from spark_jobs.image_tags_job import tag_partitions
from tests.spark_jobs.scoring_lake import build_scoring_lake, zero_shot_scorers

FP16_TOL = 2e-3


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory):
    lake, config, partitions = build_scoring_lake(tmp_path_factory.mktemp("scoring"))
    outcome = score_partitions(spark, lake, partitions, config, Lineage(run_id="local"), threshold=0.0)
    tag_partitions(spark, lake, partitions, model_identity(config), *zero_shot_scorers(config), Lineage())
    return lake, config, partitions, outcome


def by_uid(table):
    return {uid: i for i, uid in enumerate(table["uid"].to_pylist())}


def test_every_ok_image_is_scored_once_in_one_commit(scored):
    lake, config, partitions, outcome = scored
    scores = lake.read(CLIP_SCORES)
    ok = lake.read(IMAGES, filter=pc.field("status") == "ok")
    assert sorted(scores["uid"].to_pylist()) == sorted(ok["uid"].to_pylist())
    assert outcome.version == 0 and lake.lineage(CLIP_SCORES).run_id == "local"
    assert sum(c["scored"] for c in outcome.counts.values()) == ok.num_rows == 16
    assert set(outcome.counts) == set(partitions) and all(c["scored"] == 4 for c in outcome.counts.values())
    above = int(pc.sum(pc.greater(scores["similarity"], 0.0)).as_py())
    assert sum(c["above_threshold"] for c in outcome.counts.values()) == above
    assert outcome.devices == {"cpu": 16}  # no GPU slots in local mode


def test_same_scores_as_the_bare_model_on_the_same_rows(scored):
    lake, config, _, _ = scored
    images, captions = lake.read(IMAGES), lake.read(CANDIDATES, columns=["uid", "caption"])
    bare = score_images(images, captions, load_clip(config), config.batch_size, workers=0)
    spark_scores = lake.read(CLIP_SCORES)
    order = [by_uid(spark_scores)[u] for u in bare["uid"].to_pylist()]
    np.testing.assert_allclose(
        embeddings_from_column(spark_scores["image_embedding"], 64)[order],
        embeddings_from_column(bare["image_embedding"], 64), atol=FP16_TOL,
    )
    np.testing.assert_allclose(spark_scores["similarity"].to_numpy()[order], bare["similarity"].to_numpy(), atol=FP16_TOL)


def test_tags_are_those_of_the_bare_tagger(scored):
    lake, config, _, _ = scored
    scores, tags = lake.read(CLIP_SCORES), lake.read(IMAGE_TAGS)
    bare = tag_embeddings(scores, *zero_shot_scorers(config))
    order = [by_uid(tags)[u] for u in bare["uid"].to_pylist()]
    assert tags.num_rows == scores.num_rows == 16
    for column in ("punsafe", "aesthetic", "scorers"):
        assert tags[column].take(order).equals(bare[column]), column


@pytest.mark.parametrize("change, error", [
    ({"device": "cuda"}, r"^clip.device is 'cuda' but no CUDA device is available$"),
    # The driver never opens the model: the executors' tasks find it missing.
    ({"checkpoint": "/nowhere/on/the/executors/model.pt"}, r"^clip.checkpoint file not found: /nowhere/on/the/executors/model.pt$"),
], ids=["gpu-not-there", "executor-without-the-model"])
def test_a_task_that_cannot_build_the_model_is_one_line_and_commits_nothing(spark, scored, tmp_path, change, error):
    lake, config, partitions, _ = scored
    copy = Lake(str(tmp_path / "lake"))
    shutil.copytree(lake.root, copy.root)
    shutil.rmtree(Path(copy.root) / CLIP_SCORES.name)
    # One WARC file: a failed task's Python worker exits, and each new one imports open_clip again.
    with pytest.raises(ClipModelError, match=error):
        score_partitions(spark, copy, partitions[:1], dataclasses.replace(config, **change), Lineage(), threshold=0.0)
    assert copy.version(CLIP_SCORES) is None
    assert not list((Path(copy.root) / CLIP_SCORES.name).rglob("*.parquet"))


@pytest.mark.slow
def test_two_workers_each_with_a_gpu_slot_score_bit_for_bit_like_local_mode(scored, standalone_cluster, tmp_path):
    lake, config, partitions, _ = scored
    # Two WARC files, so one task per worker: each fresh Python worker that scores imports
    # open_clip (~15 s here), and a worker with three tasks would start up to three of them.
    partitions = partitions[:2]
    copy = tmp_path / "lake"
    shutil.copytree(lake.root, copy)
    for table in (CLIP_SCORES, IMAGE_TAGS):
        shutil.rmtree(copy / table.name)
    driver = Path(__file__).with_name("cluster_scoring_driver.py")
    result = subprocess.run(
        [sys.executable, str(driver), standalone_cluster, str(copy), json.dumps(dataclasses.asdict(config)),
         json.dumps(partitions)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    devices = json.loads([l for l in result.stdout.splitlines() if l.startswith("devices=")][-1].removeprefix("devices="))
    # Each task ran with the GPU address its worker offered; no CUDA here, so on the CPU.
    assert devices.keys() == {"cpu (spark gpu 0)", "cpu (spark gpu 1)"} and sum(devices.values()) == 8
    ours = pc.field("warc_file").isin(partitions)
    local, cluster = lake.read(CLIP_SCORES, filter=ours), Lake(str(copy)).read(CLIP_SCORES)
    order = [by_uid(cluster)[u] for u in local["uid"].to_pylist()]
    for column in ("image_embedding", "text_embedding", "similarity"):
        assert cluster[column].take(order).equals(local[column]), column
    local, cluster = lake.read(IMAGE_TAGS, filter=ours), Lake(str(copy)).read(IMAGE_TAGS)
    order = [by_uid(cluster)[u] for u in local["uid"].to_pylist()]
    assert cluster["punsafe"].take(order).equals(local["punsafe"])
