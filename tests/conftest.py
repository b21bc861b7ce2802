"""Shared fixtures: one local Spark session for the whole run (starting one costs ~10 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config import SparkConfig
from infra.spark import build_spark_session


@pytest.fixture(scope="session")
def spark():
    session = build_spark_session(SparkConfig(master="local[2]", app_name="pairlake-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_checkpoint():
    """The demo CLIP model, trained once and cached in .cache/demo_model (as `make demo` does)."""
    from gpu_jobs.demo_model import ensure_demo_model

    return ensure_demo_model(Path(__file__).resolve().parent.parent / ".cache" / "demo_model")


@pytest.fixture(scope="session")
def demo_heads(demo_checkpoint):
    """The demo's tag heads (punsafe, pwatermark, aesthetic) over the demo model, cached beside it."""
    from gpu_jobs.demo_heads import ensure_demo_heads

    return ensure_demo_heads(demo_checkpoint.parent)
