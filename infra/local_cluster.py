"""A Spark standalone cluster (one master, N workers) started from the pyspark install on 127.0.0.1.

Tests and benchmarks use it to prove the data source works across processes, not only in
``local[*]``; ``python -m infra.local_cluster`` runs one in the foreground for trying things out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pyspark

from infra.local_services import free_port, until_interrupted, wait_forever


class LocalStandaloneCluster:
    """Start with ``with LocalStandaloneCluster() as master_url: ...``; both JVMs stop on exit."""

    def __init__(
        self, worker_cores: int = 2, worker_memory: str = "2g", start_timeout_s: float = 90.0, workers: int = 1,
        gpu_discovery: list[str] | None = None,
    ):
        """``gpu_discovery``: per worker, a GPU discovery script (Spark's JSON answer on stdout), so
        that worker offers those GPUs to its executors; none by default."""
        if gpu_discovery is not None and len(gpu_discovery) != workers:
            raise ValueError("give one GPU discovery script per worker")
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self.workers = workers
        self.gpu_discovery = gpu_discovery
        self.start_timeout_s = start_timeout_s
        self.spark_home = Path(pyspark.__file__).parent
        self.work_dir = Path(tempfile.mkdtemp(prefix="pairlake-spark-cluster-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self.master_url = ""

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(self.spark_home),
            SPARK_LOCAL_IP="127.0.0.1",
            PYSPARK_PYTHON=sys.executable,
            SPARK_WORKER_DIR=str(self.work_dir / "work"),
            SPARK_LOG_DIR=str(self.work_dir / "logs"),
        )
        return env

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.work_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [str(self.spark_home / "bin" / "spark-class"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self._env(), **(env or {})},
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def _wait_for(self, name: str, pattern: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        log = self.work_dir / f"{name}.log"
        while time.monotonic() < deadline:
            if re.search(pattern, log.read_text(errors="replace")):
                return
            if any(p.poll() is not None for p in self._procs):
                break
            time.sleep(0.3)
        tail = log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"spark {name} did not start; log: {tail}")

    def start(self) -> str:
        try:
            return self._start()
        except BaseException:  # a daemon that did not come up, Ctrl-C, SIGTERM: none left running
            self.stop()
            raise

    def _start(self) -> str:
        self.work_dir.mkdir(exist_ok=True)  # stop() removed it
        port = free_port()
        self._spawn(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port()),
        )
        self.master_url = f"spark://127.0.0.1:{port}"
        self._wait_for("master", r"Starting Spark master|I have been elected leader")
        for i in range(self.workers):
            name = "worker" if self.workers == 1 else f"worker-{i}"
            opts = {}
            if self.gpu_discovery is not None:
                opts["SPARK_WORKER_OPTS"] = (f"-Dspark.worker.resource.gpu.amount=1 "
                                             f"-Dspark.worker.resource.gpu.discoveryScript={self.gpu_discovery[i]}")
            self._spawn(
                name, "org.apache.spark.deploy.worker.Worker", self.master_url,
                "--host", "127.0.0.1", "--cores", str(self.worker_cores), "--memory", self.worker_memory,
                "--webui-port", str(free_port()), "--work-dir", str(self.work_dir / name), env=opts,
            )
            self._wait_for(name, r"Successfully registered with master")
        return self.master_url

    def stop(self) -> None:
        """Stop the JVMs and remove the work directory: its logs and the executors' files."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._procs.clear()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    with until_interrupted(), LocalStandaloneCluster() as url:
        print(f"spark standalone cluster at {url} (Ctrl-C stops it)", flush=True)
        wait_forever()


if __name__ == "__main__":
    main()
