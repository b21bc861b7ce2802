"""Every CLI error is one line, and argument errors answer before torch, faiss or Spark load."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = textwrap.dedent("""
    import sys, time
    started = time.perf_counter()
    from orchestration.cli import main
    rc = main(sys.argv[1:])
    heavy = sorted(m for m in ("torch", "faiss", "pyspark", "dagster") if m in sys.modules)
    print(f"rc={rc} heavy={','.join(heavy) or '-'} seconds={time.perf_counter() - started:.2f}")
""")


def _run(tmp_path, *args, **env):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PAIRLAKE_CONFIG": "", "PAIRLAKE_PROFILE": "",
                               "PAIRLAKE__LAKE__ROOT": str(tmp_path / "lake"), **env})
    facts = dict(item.split("=", 1) for item in proc.stdout.strip().splitlines()[-1].split())
    return int(facts["rc"]), facts["heavy"], float(facts["seconds"]), proc.stderr.strip()


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "a cat", "-k", "0"], "-k must be between 1 and 10,000"),
        (["search", "a cat", "-k", "-5"], "-k must be between 1 and 10,000"),
        (["search", "a cat", "-k", "1000000000"], "-k must be between 1 and 10,000"),
        (["search", "--image", "/dev/zero"], "/dev/zero is not a regular file"),
        (["search", "--image", "/"], "/ is not a regular file"),
        (["search", "x" * 1001], "the text query is 1,001 characters"),
    ],
)
def test_bad_search_arguments_answer_at_once_without_the_search_stack(tmp_path, args, message):
    rc, heavy, seconds, err = _run(tmp_path, *args)
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert heavy == "-" and seconds < 3.0  # was: torch and faiss first, 6-9 s and 1.26 GB; ~0.3 s idle, 1.6 s seen under CI load


def test_a_search_image_larger_than_the_download_cap_is_refused(tmp_path):
    big = tmp_path / "big.jpg"
    with big.open("wb") as fh:
        fh.truncate(21_000_000)
    rc, heavy, _, err = _run(tmp_path, "search", "--image", str(big))
    assert rc == 2 and "at most 20,000,000 (download.max_body_bytes)" in err and heavy == "-"


@pytest.mark.parametrize("args", [["report"], ["optout", "submit", "--url", "http://a.example/x.jpg", "--requester",
                                                "a", "--reason", "b"]])
def test_an_unusable_lake_root_is_one_line(tmp_path, args):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, _, err = _run(tmp_path, *args, PAIRLAKE__LAKE__ROOT=str(blocker / "lake"))
    assert rc in (1, 2) and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(blocker) in err
