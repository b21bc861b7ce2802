"""Driver for the GPU-scheduling cluster test: scores and tags LAKE's images on MASTER, one fake GPU
per task.

Prints ``devices=<json>``: rows scored per device label, as the tasks saw their GPU addresses."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*

from infra.config import ClipConfig, SparkConfig
from infra.delta_store import Lake, Lineage
from infra.spark import spark_session
from gpu_jobs.clip_model import model_identity
from spark_jobs.clip_scores_job import score_partitions
from spark_jobs.image_tags_job import tag_partitions
from tests.spark_jobs.scoring_lake import zero_shot_scorers

master, root, config_json, partitions = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
config = ClipConfig(**json.loads(config_json))
gpu = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1", "spark.executor.cores": "1"}
with spark_session(SparkConfig(master=master, app_name="pairlake-gpu-scheduling", conf=gpu)) as spark:
    outcome = score_partitions(spark, Lake(root), partitions, config, Lineage(run_id="on-the-cluster"), threshold=0.0)
    tag_partitions(spark, Lake(root), partitions, model_identity(config), *zero_shot_scorers(config), Lineage())
print("devices=" + json.dumps(outcome.devices))
