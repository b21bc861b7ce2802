"""The suite's own scheduling: under ``make test`` (pytest-xdist, ``--dist loadgroup``) a module and
every user of a shared session fixture stay on one worker (tests/conftest.py). pytest-xdist marks
the group by suffixing the node id; a pytest whose node ids ignore that (9.2 with xdist 3.8) splits
them silently and every worker builds the demo pipeline again."""

import os

import pytest


def test_this_run_keeps_each_group_on_one_worker(request: pytest.FixtureRequest) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
        pytest.skip("not under pytest-xdist's loadgroup scheduling")
    assert request.node.nodeid.endswith("@tests/test_worker_groups.py"), (
        f"pytest-xdist did not apply the test groups ({request.node.nodeid}): use the pytest pinned in constraints.txt"
    )
