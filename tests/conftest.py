"""Shared fixtures: one local Spark session for the whole run (starting one costs ~10 s)."""

from __future__ import annotations

import pytest

from infra.config import SparkConfig
from infra.spark import build_spark_session


@pytest.fixture(scope="session")
def spark():
    session = build_spark_session(SparkConfig(master="local[2]", app_name="pairlake-tests"))
    yield session
    session.stop()
