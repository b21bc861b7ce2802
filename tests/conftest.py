"""Shared fixtures: one local Spark session for the whole run (starting one costs ~10 s), and the
demo model: the committed one (infra/demo_model) while it is current, else trained in a background
process while the tests that do not need it run first."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Each run's index caches in a folder of its own, removed at its end, before gpu_jobs.knn_index
# reads the variable: the index folders the tests make do not outlive the run, and their
# cached copies should not either (the CLI and Dagster subprocesses inherit it).
if "PAIRLAKE_INDEX_CACHE" not in os.environ:
    os.environ["PAIRLAKE_INDEX_CACHE"] = tempfile.mkdtemp(prefix="pairlake-test-index-cache-")
    atexit.register(shutil.rmtree, os.environ["PAIRLAKE_INDEX_CACHE"], ignore_errors=True)

from gpu_jobs import demo_model
from gpu_jobs.demo_heads import ensure_demo_heads
from gpu_jobs.demo_heads import is_current as heads_are_current
from infra import s3_server, spark_cds
from infra.config import SparkConfig
from infra.delta_store import Lake
from infra.local_cluster import LocalStandaloneCluster
from infra.spark import build_spark_session

# Every Spark driver the tests start (here, in CLI and Dagster subprocesses), and its executors on
# the test cluster, compile with the JVM's C1 only: the tests' jobs are small and short, C2's
# compiling never pays back, and the suite is CPU-bound (Spark-heavy modules: 99-134 -> 71-79
# CPU-s; the cluster test with C1 executors: 91-97 -> 81-83 CPU-s). These driver options replace
# build_spark_session's, so they map the class archive `make setup` built too (infra/spark_cds.py).
os.environ.setdefault(
    "PYSPARK_SUBMIT_ARGS",
    f"--driver-java-options '-XX:TieredStopAtLevel=1 {spark_cds.java_options()}' "
    "--conf spark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1 pyspark-shell",
)

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "infra" / "demo_model"
_MODEL_FIXTURES = {"demo_checkpoint", "demo_heads"}
# Session fixtures worth building once: their users share one pytest-xdist worker.
_SHARED_FIXTURES = ("pipeline", "standalone_cluster")
_TEST_NICENESS = 5
_preparing: subprocess.Popen | None = None
_COMMITTED_MODEL_CURRENT = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto --dist loadgroup --no-loadscope-reorder``,
    groups handed out in this order, not largest first) a module's tests stay on one worker, so
    that module fixtures are built once, and so do all users of a shared session fixture.

    With the committed demo model current, the groups of the shared fixtures (the longest chains)
    go out first. Otherwise the tests that need the model run last (stable order otherwise), and
    the model is trained in a background process meanwhile: training is then the longest single
    step of the suite, and most tests never touch the model. Only the first worker starts the
    trainer; the others wait on the model's lock."""
    global _preparing
    # A module joins the group of a shared fixture that any of its tests uses.
    group: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        shared = next((name for name in _SHARED_FIXTURES if name in getattr(item, "fixturenames", ())), None)
        group[module] = shared or group.get(module, module)

    def group_of(item: pytest.Item) -> str:
        return group[item.nodeid.split("::")[0]]

    def shared_first(item: pytest.Item) -> bool:  # a sort key: the shared fixtures' long chains first
        return group_of(item) not in _SHARED_FIXTURES

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of(item)))
    config.stash[_COMMITTED_MODEL_CURRENT] = demo_model.is_current(DEMO_MODEL_DIR) and heads_are_current(DEMO_MODEL_DIR)
    if config.stash[_COMMITTED_MODEL_CURRENT]:
        items.sort(key=shared_first)
        return
    # A group goes to one worker whole, so a group with any user of the model goes last whole: a
    # worker handed it early would wait for the model instead of running other tests.
    waiting_groups = {group_of(item) for item in items if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))}
    if not waiting_groups:
        return
    # The pipeline's users are the longest chain after the model: first of those.
    needs_model = sorted((item for item in items if group_of(item) in waiting_groups), key=shared_first)
    items[:] = [item for item in items if group_of(item) not in waiting_groups] + needs_model
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        DEMO_MODEL_DIR.mkdir(parents=True, exist_ok=True)
        log = open(DEMO_MODEL_DIR / "background-training.log", "w")
        # Huge pages: the same weights bit for bit, twice as fast here (see the Makefile).
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "1")}
        _preparing = subprocess.Popen(
            [sys.executable, "-m", "gpu_jobs.demo_heads", "--model-dir", str(DEMO_MODEL_DIR)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
    # The trainer is the suite's critical path: the tests (and the Spark and Dagster processes
    # they start) yield the CPU to it. Started before this, it keeps the normal priority.
    os.nice(_TEST_NICENESS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _preparing is not None and _preparing.poll() is None:
        _preparing.terminate()  # an interrupted run; the model's lock and atomic save keep the folder sound
        _preparing.wait()


@pytest.fixture(scope="session")
def spark():
    session = build_spark_session(SparkConfig(master="local[2]", app_name="pairlake-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory) -> Iterator[str]:
    """A Spark standalone cluster on 127.0.0.1: two 1-core workers, each offering one GPU slot
    (a discovery script answering address 0, resp. 1; no CUDA behind it). Yields the master URL."""
    scripts = []
    folder = tmp_path_factory.mktemp("gpu-discovery")
    for address in ("0", "1"):
        script = folder / f"gpu-{address}.sh"
        script.write_text(f'#!/bin/sh\necho \'{{"name": "gpu", "addresses": ["{address}"]}}\'\n')
        script.chmod(0o755)
        scripts.append(str(script))
    cluster = LocalStandaloneCluster(worker_cores=1, worker_memory="1g", workers=2, gpu_discovery=scripts)
    with cluster as master:
        yield master
    assert not cluster.work_dir.exists()  # the executors' files went with the cluster


@pytest.fixture
def committed_model_was_current(request: pytest.FixtureRequest) -> bool:
    """Whether infra/demo_model matched the training code when the run began, before any retraining."""
    return request.config.stash[_COMMITTED_MODEL_CURRENT]


@pytest.fixture(scope="session")
def demo_checkpoint():
    """The demo CLIP model in infra/demo_model (as `make demo` uses it), trained there when stale."""
    if _preparing is not None:
        _preparing.wait()  # whatever it did, ensure_demo_model below checks (and if need be trains)
    return demo_model.ensure_demo_model(DEMO_MODEL_DIR)


@pytest.fixture(scope="session")
def demo_heads(demo_checkpoint):
    """The demo's tag heads (punsafe, pwatermark, aesthetic) over the demo model, cached beside it."""
    return ensure_demo_heads(demo_checkpoint.parent)


# The local S3 server's one identity, in the environment as any user's credentials would be: set
# before any Spark JVM starts, so its executors' Python workers read them too.
os.environ.setdefault("AWS_ACCESS_KEY_ID", s3_server.ACCESS_KEY)
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", s3_server.SECRET_KEY)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[s3_server.S3Endpoint]:
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for the whole run."""
    with s3_server.LocalS3Server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_lake(s3_endpoint, request) -> Lake:
    """A lake in a fresh bucket of the local S3 server."""
    bucket = "t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:20]
    s3_endpoint.create_bucket(bucket)
    return Lake(f"s3://{bucket}/lake", s3_endpoint.storage_options())
