"""A named lease in the lake itself: one holder at a time, across processes, CLIs and Dagster runs.

Removals take the ``removal`` lease, so two opt-out runs never purge the same tables at once (the
second waits, then says in one line who holds it). The lease is a file created with O_EXCL under
``<lake>/_leases/`` (in a bucket: an object created only if absent, by a conditional put); it
names the holder's host, pid and process identity, so a lease left by a killed process on this
host is recognised and taken over. The holding process may take it
again (a CLI that holds it runs the removal step in process).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from infra import lake_layout
from infra.config import InputError
from infra.delta_store import Lake
from infra.lake_storage import bucket_and_key, s3_client
from infra.process_identity import process_identity

LEASE_DIR = lake_layout.LEASES


class LeaseBusy(InputError):
    """Another process holds the lease: said in one line, nothing was changed."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "process": process_identity(os.getpid())}


def _dead(holder: dict) -> bool:
    """Whether the holder is a process of this host that no longer runs (other hosts: unknown)."""
    if holder.get("host") != socket.gethostname():
        return False
    return process_identity(int(holder.get("pid", -1))) != holder.get("process")


def _parse(data: bytes, age_s: float) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        # Half written by a holder that died between create and write: old enough means abandoned.
        return {"host": socket.gethostname(), "pid": -1} if age_s > 60 else {}


class _LeaseFile:
    """The lease as a file on a local (or shared) disk: created with O_EXCL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)

    def create(self, record: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        return True

    def read(self) -> tuple[dict | None, object]:
        return self._read(self.path), None

    def take_over(self, holder: dict, token: object, record: dict) -> bool:
        # Renamed aside first: of two processes that both saw it dead, one wins; the loser puts
        # back what it moved if that was already the winner's. The caller then creates it anew.
        aside = self.path.with_name(f".{self.path.name}.dead-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, aside)
            if self._read(aside) != holder:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
            aside.unlink()
        return False

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return _parse(path.read_bytes(), time.time() - path.stat().st_mtime)
        except FileNotFoundError:
            return None

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _LeaseObject:
    """The lease as an object in the lake's bucket: created only if absent (``If-None-Match``),
    taken over only if unchanged since it was read (``If-Match`` on its etag)."""

    def __init__(self, lake: Lake, key: str) -> None:
        self.client = s3_client(lake.storage)
        self.bucket, self.key = bucket_and_key(lake.root, key)
        self.where = f"{lake.root}/{key}"

    def _put(self, record: dict, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(record).encode(), **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def create(self, record: dict) -> bool:
        return self._put(record, IfNoneMatch="*")

    def read(self) -> tuple[dict | None, object]:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise
        age = (dt.datetime.now(dt.timezone.utc) - answer["LastModified"]).total_seconds()
        return _parse(answer["Body"].read(), age), answer["ETag"]

    def take_over(self, holder: dict, token: object, record: dict) -> bool:
        return self._put(record, IfMatch=str(token))

    def release(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


@contextlib.contextmanager
def lease(lake: Lake, name: str, purpose: str, wait_s: float) -> Iterator[None]:
    """Hold the lease ``name`` of the lake for the block; waits up to ``wait_s`` for another holder."""
    key = lake_layout.lease(name)
    record = _LeaseFile(lake.path(key)) if lake.is_local else _LeaseObject(lake, key)
    me = _me()
    mine = {**me, "purpose": purpose, "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    deadline = time.monotonic() + wait_s
    while not record.create(mine):
        holder, token = record.read()
        if holder is None:
            continue  # released just now
        if holder and all(holder.get(k) == me[k] for k in ("host", "pid", "process")):
            yield  # this process holds it already
            return
        if holder and _dead(holder):
            if record.take_over(holder, token, mine):
                break
            continue
        if time.monotonic() >= deadline:
            who = f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, " \
                  f"since {holder.get('since', '?')})" if holder else "a process that is starting"
            raise LeaseBusy(f"another {name} is running: {who}; waited {wait_s:.0f} s. If nothing runs there, "
                            f"delete {record.where}") from None
        time.sleep(0.2)
    try:
        yield
    finally:
        record.release()
