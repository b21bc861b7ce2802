"""The code location loads, whole, and cheaply: every Dagster process (daemon, code server, run
worker, `dagster dev`) and every CLI command that runs the graph imports it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from orchestration.resources import code_version

REPO = Path(__file__).resolve().parents[2]


def test_the_definitions_load_with_every_job_sensor_and_schedule():
    from orchestration.definitions import defs

    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {"discover_warc_files", "ingest_warc_files", "export_release", "apply_optout", "rerelease"} <= set(
        repository.job_names)
    assert {"optout_inbox_sensor", "rerelease_sensor", "dead_run_sensor"} <= {s.name for s in repository.sensor_defs}
    assert len(repository.schedule_defs) == 2
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert {"candidates", "images", "clip_scores", "image_tags", "curated", "knn_index", "release"} <= keys


def test_loading_the_definitions_imports_neither_torch_nor_open_clip():
    """open_clip's import costs ~20 CPU-s here (torchvision pulls torch._dynamo), torch's ~5: the
    stages that need them import them when they run."""
    script = ("import sys, orchestration.definitions; "
              "print(sorted(m for m in ('open_clip', 'torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_code_version_hashes_the_named_modules_source_without_importing_them():
    source = (REPO / "gpu_jobs" / "clip_scoring.py").read_bytes()
    assert code_version("gpu_jobs.clip_scoring") == hashlib.sha256(source).hexdigest()[:12]
    assert code_version("gpu_jobs.clip_scoring", "spark_jobs.kept_set") != code_version("gpu_jobs.clip_scoring")
    with pytest.raises(ModuleNotFoundError, match="no module gpu_jobs.nothing_here"):
        code_version("gpu_jobs.nothing_here")
