"""The session's pipeline run (tests/orchestration/pipeline_run.py), shared by the test modules."""

import pytest

from tests.orchestration.pipeline_run import run_pipeline


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, demo_checkpoint, demo_heads, spark):
    with run_pipeline(tmp_path_factory.mktemp("pipeline"), demo_checkpoint, demo_heads) as run:
        yield run
