"""A named lease in the lake itself: one holder at a time, across processes, CLIs and Dagster runs.

Removals take the ``removal`` lease, so two opt-out runs never purge the same tables at once (the
second waits, then says in one line who holds it). The lease is a file created with O_EXCL under
``<lake>/_leases/``; it names the holder's host, pid and process identity, so a lease left
by a killed process on this host is recognised and taken over. The holding process may take it
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


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Half written by a holder that died between create and write: old enough means abandoned.
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > 60:
                return {"host": socket.gethostname(), "pid": -1}
        return {}


@contextlib.contextmanager
def lease(lake_root: str | Path, name: str, purpose: str, wait_s: float) -> Iterator[None]:
    """Hold the lease ``name`` of the lake for the block; waits up to ``wait_s`` for another holder."""
    path = Lake(str(lake_root)).path(lake_layout.lease(name))  # a local root only, for now
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released just now
            if holder and all(holder.get(k) == me[k] for k in ("host", "pid", "process")):
                yield  # this process holds it already
                return
            if holder and _dead(holder):
                # Taken over by renaming first: of two processes that both saw it dead, one wins.
                aside = path.with_name(f".{name}.dead-{uuid.uuid4().hex[:8]}")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, aside)
                    if _read(aside) != holder:  # another process took it over meanwhile: put theirs back
                        with contextlib.suppress(FileExistsError):
                            os.link(aside, path)
                    aside.unlink()
                continue
            if time.monotonic() >= deadline:
                who = f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, " \
                      f"since {holder.get('since', '?')})" if holder else "a process that is starting"
                raise LeaseBusy(f"another {name} is running: {who}; waited {wait_s:.0f} s. If nothing runs there, "
                                f"delete {path}") from None
            time.sleep(0.2)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({**me, "purpose": purpose, "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
                      fh)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
