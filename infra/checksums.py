"""Checksums of files, read in blocks (checkpoints and shards can be gigabytes)."""

import hashlib
from pathlib import Path
from typing import IO


def stream_sha256(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as fh:
        return stream_sha256(fh)
