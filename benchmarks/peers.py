"""The tools a user would pick instead of pairlake, for side-by-side benchmarks: each installed once
into its own virtualenv under ``.cache/peers/<name>`` (never the project's: their pins would fight
it), from exact pins, and run as whole processes whose CPU time is read from the kernel.

    python = peer_python("fastwarc-2.0.1")
    run = run_measured([str(python), script, ...])  # -> Measured(cpu_s, wall_s, stdout)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / ".cache" / "peers"
# name -> exact pins. resiliparse pins its fastwarc; 2.0 is the current release, 1.1 the last
# before its Rust rewrite (measured faster per element here), so both are benchmarked.
# clip_back imports pkg_resources at start (its front's static files), which setuptools 81 dropped.
# img2dataset with distributor="pyspark" (the peer of a Spark stage) needs pyspark beside it: the
# project's pin, so uv's cache of its built wheel serves both.
PEERS = {
    "fastwarc-2.0.1": ("fastwarc==2.0.1", "resiliparse==2.0.1"),
    "fastwarc-1.1.0": ("fastwarc==1.1.0", "resiliparse==1.1.0"),
    "img2dataset-1.47.0": ("img2dataset==1.47.0",),
    "img2dataset-1.47.0-pyspark": ("img2dataset==1.47.0", "pyspark==4.3.0"),
    "clip-retrieval-2.45.0": ("clip-retrieval==2.45.0", "setuptools==80.10.2"),
}
# A peer's process environment: no proxies for loopback servers, no update checks calling out.
PEER_ENV = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost", "NO_ALBUMENTATIONS_UPDATE": "1",
            "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
# Wheels only; compiled to bytecode at install as the project's own venv is (the Makefile says why),
# so that neither side's start-up compiles its imports.
_INSTALL_OPTIONS = ("--only-binary", ":all:", "--compile-bytecode")
# Exceptions to wheels-only, per peer: clip-retrieval pins fire<0.6, whose releases are sdists only
# (a pure-Python build); so are pyspark's (pure Python, Spark's jars inside).
_PEER_INSTALL_OPTIONS = {"clip-retrieval-2.45.0": ("--no-binary", "fire"),
                         "img2dataset-1.47.0-pyspark": ("--no-binary", "pyspark")}
_PROXIES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def peer_python(name: str) -> Path:
    """The Python of peer ``name``'s virtualenv, created and installed on first use (PyPI wheels,
    but for the sdists ``_PEER_INSTALL_OPTIONS`` allows)."""
    pins = PEERS[name]
    venv = PEERS_DIR / name
    python, stamp = venv / "bin" / "python", venv / ".installed"
    options = (*_INSTALL_OPTIONS, *_PEER_INSTALL_OPTIONS.get(name, ()))
    wanted = "\n".join((*options, *pins))
    if stamp.is_file() and stamp.read_text() == wanted and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    uv = Path(sys.executable).with_name("uv")
    print(f"installing {' '.join(pins)} into {venv} ...", flush=True)
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), *options, *pins], check=True)
    stamp.write_text(wanted)
    return python


def peer_env(**extra: str) -> dict[str, str]:
    """This process's environment without proxies, with PEER_ENV and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXIES}
    return {**env, **PEER_ENV, **extra}


@dataclass(frozen=True)
class Measured:
    cpu_s: float  # user + system of the process and every child it waited for
    wall_s: float
    stdout: str


def run_measured(command: list[str], timeout_s: float = 3600, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> Measured:
    """Run ``command`` to the end; its CPU seconds from wait4 (the kernel's count for the process
    and the children it reaped: worker pools included). Raises with the tail of stderr if it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env or peer_env(), cwd=cwd)
        timer = threading.Timer(timeout_s, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({process.returncode}): {stderr[-2000:]}")
    return Measured(usage.ru_utime + usage.ru_stime, wall, stdout)
