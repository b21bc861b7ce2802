"""The suite's own scheduling: under ``make test`` (pytest-xdist, ``--dist loadgroup``) a module and
every user of a shared session fixture stay on one worker (tests/conftest.py). pytest-xdist marks
the group by suffixing the node id; a pytest whose node ids ignore that (9.2 with xdist 3.8) splits
them silently and every worker builds the demo pipeline again."""

import subprocess
import sys
from pathlib import Path

_MODULE = '''
import os
import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("n", range(4))
def test_where(n):
    with open(os.environ["WORKERS_SEEN"], "a") as seen:
        seen.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_the_pinned_pytest_and_xdist_keep_a_group_on_one_worker(tmp_path: Path) -> None:
    for name in ("test_one.py", "test_two.py"):
        (tmp_path / name).write_text(_MODULE)
    seen = tmp_path / "workers.txt"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"WORKERS_SEEN": str(seen), "PATH": ""},
    )
    assert result.returncode == 0, result.stdout[-2000:]
    workers = seen.read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, (
        f"pytest-xdist split a group across workers {sorted(set(workers))}: use the pytest pinned in constraints.txt"
    )
