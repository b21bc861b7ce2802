"""Export samples (kept pairs joined with their image bytes) as webdataset shards, img2dataset layout.

``out_dir/00000.tar`` holds ``{key}.jpg``, ``{key}.txt`` (caption) and ``{key}.json`` (metadata) per
sample; next to it ``00000.parquet`` (one row per sample: key + metadata) and ``00000_stats.json``.
``out_dir`` is a Folder: a local folder or a prefix in the lake's bucket.
Keys are img2dataset's: shard index (5 digits) + position in the shard, e.g. ``000000012``.

Shards are reproducible: samples are ordered by uid and every tar header field that would vary
(mtime, owner, mode) is fixed, so the same rows always give byte-identical tars and the manifest's
sha256 identifies content. Each file is published whole (``Folder.publish``), so a crash never
leaves a partial file under a final name; ``_stats.json`` is written last per shard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infra.config import InputError
from infra.lake_storage import Folder, as_folder
from infra.tables import SHARDS

log = logging.getLogger(__name__)

SHARD_DIGITS = 5
REQUIRED_COLUMNS = ("uid", "caption", "image")
_SHARD_FILE = re.compile(r"^\.?\d{5,}(\.tar|\.parquet|_stats\.json)(\.tmp)?$")


class ShardExportError(InputError):
    """Samples that cannot be exported as given (unsorted, duplicated, without image or caption)."""


@dataclass(frozen=True)
class ShardInfo:
    shard: str  # "00000"
    path: str  # the tar
    samples: int
    bytes: int  # size of the tar
    sha256: str  # of the tar


def export_shards(
    samples: Iterable[pa.RecordBatch] | pa.Table,
    out_dir: Folder | str | Path,
    samples_per_shard: int,
    image_ext: str = "jpg",
    overwrite: bool = False,
) -> list[ShardInfo]:
    """Write ``samples`` as shards of ``samples_per_shard`` into ``out_dir``; return one ShardInfo per tar.

    ``samples`` needs columns uid, caption and image (bytes); every other column is metadata and goes
    into the json and parquet files. A Table is sorted by uid here; a stream of batches must already
    be sorted by uid (checked) so that exporting never needs all the image bytes in memory at once.
    ``out_dir`` must hold no shards unless ``overwrite``, which first deletes the shard files there.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    out = prepare_out_dir(out_dir, overwrite)
    start = time.perf_counter()
    shards = list(write_numbered_shards(_numbered(_batches_by_uid(samples), samples_per_shard), out,
                                        samples_per_shard, image_ext))
    elapsed = time.perf_counter() - start
    total = sum(s.bytes for s in shards)
    log.info(
        "exported %d samples in %d shards to %s: %.1f MB in %.2f s (%.1f MB/s)",
        sum(s.samples for s in shards),
        len(shards),
        out,
        total / 1e6,
        elapsed,
        total / 1e6 / max(elapsed, 1e-9),
    )
    return shards


def prepare_out_dir(out_dir: Folder | str | Path, overwrite: bool = False) -> Folder:
    """Create ``out_dir``; it must hold no shards unless ``overwrite``, which deletes them first."""
    out = as_folder(out_dir)
    out.create()
    existing = [name for name in out.names() if _SHARD_FILE.match(name)]
    if existing and not overwrite:
        raise FileExistsError(f"{out.path} already holds shard files ({existing[0]}, ...); use a fresh directory")
    for name in existing:
        out.delete(name)
    return out


def write_numbered_shards(
    samples: Iterable[pa.RecordBatch], out: Folder, samples_per_shard: int, image_ext: str = "jpg"
) -> Iterator[ShardInfo]:
    """Write samples that carry their shard's index (column ``shard``), sorted by shard then uid,
    each shard whole: the one writer behind a single-process export and each Spark export task.
    Yields each shard's ShardInfo once its files are in place."""
    key_digits = len(str(samples_per_shard - 1))
    writer: _ShardWriter | None = None
    last: tuple[int, str] | None = None
    try:
        for batch in samples:
            shard_of = batch.column("shard").to_pylist()
            batch = batch.drop_columns(["shard"])
            images = batch.column("image")
            metadata = [name for name in batch.schema.names if name != "image"]
            for i, meta in enumerate(batch.select(metadata).to_pylist()):
                at = (shard_of[i], meta["uid"])
                if last is not None and not at > last:
                    raise ShardExportError(
                        f"samples must be sorted by uid without duplicates: {at[1]!r} came after {last[1]!r}"
                    )
                last = at
                if writer is not None and writer.index != at[0]:
                    yield writer.finish()
                    writer = None
                if writer is None:
                    writer = _ShardWriter(out, at[0], key_digits, image_ext, batch.schema)
                if writer.count == samples_per_shard:
                    raise ShardExportError(f"shard {writer.name} would hold more than {samples_per_shard} samples")
                writer.add(meta, images[i].as_py())
        if writer is not None:
            yield writer.finish()
            writer = None
    finally:
        if writer is not None:
            writer.abort()


def manifest_table(
    shards: list[ShardInfo], export_id: str, source_version: int, created_at: dt.datetime | None = None
) -> pa.Table:
    """Rows of the SHARDS table for one export."""
    created_at = created_at or dt.datetime.now(dt.timezone.utc)
    n = len(shards)
    return pa.Table.from_pydict(
        {
            "export_id": [export_id] * n,
            "shard": [s.shard for s in shards],
            "path": [s.path for s in shards],
            "samples": [s.samples for s in shards],
            "bytes": [s.bytes for s in shards],
            "sha256": [s.sha256 for s in shards],
            "source_version": [source_version] * n,
            "created_at": [created_at] * n,
        },
        schema=SHARDS.schema,
    )


def _batches_by_uid(samples: Iterable[pa.RecordBatch] | pa.Table) -> Iterator[pa.RecordBatch]:
    if isinstance(samples, pa.Table):
        samples = samples.sort_by("uid").to_batches()
    for batch in samples:
        missing = [c for c in REQUIRED_COLUMNS if c not in batch.schema.names]
        if missing:
            raise ShardExportError(f"samples lack column(s) {', '.join(missing)}")
        yield batch


def _numbered(batches: Iterable[pa.RecordBatch], samples_per_shard: int) -> Iterator[pa.RecordBatch]:
    """Consecutive samples fill consecutive shards."""
    seen = 0
    for batch in batches:
        index = np.arange(seen, seen + batch.num_rows, dtype=np.int64) // samples_per_shard
        seen += batch.num_rows
        yield batch.append_column("shard", pa.array(index))


class _HashingWriter:
    """File wrapper that hashes and counts what is written, so the tar is never re-read."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class _ShardWriter:
    """One shard being written: the tar streams to its temp file; parquet and stats follow on finish."""

    def __init__(self, out: Folder, index: int, key_digits: int, image_ext: str, schema: pa.Schema) -> None:
        self.index = index
        self.name = f"{index:0{SHARD_DIGITS}d}"
        self.out = out
        self.key_digits = key_digits
        self.image_ext = image_ext
        self.count = 0
        self.image_bytes = 0
        self.rows: list[dict[str, Any]] = []
        fields = [f for f in schema if f.name != "image"]
        self.parquet_schema = pa.schema([pa.field("key", pa.string()), *fields, pa.field("status", pa.string())])
        self._output = contextlib.ExitStack()
        self._hashing = _HashingWriter(self._output.enter_context(out.publish(f"{self.name}.tar")))
        self._tar = _TarWriter(self._hashing)

    def add(self, meta: dict[str, Any], image: bytes | None) -> None:
        if image is None or meta["caption"] is None:
            raise ShardExportError(f"sample uid {meta['uid']} has no image bytes or no caption")
        key = f"{self.name}{self.count:0{self.key_digits}d}"
        row = {"key": key, **meta, "status": "success"}
        text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode()
        for ext, data in ((self.image_ext, image), ("txt", meta["caption"].encode()), ("json", text)):
            self._tar.add(f"{key}.{ext}", data)
        self.rows.append(row)
        self.count += 1
        self.image_bytes += len(image)

    def finish(self) -> ShardInfo:
        self._tar.close()  # writes the end-of-archive blocks
        self._output.close()  # publishes the tar
        rows = pa.Table.from_pylist(self.rows, schema=self.parquet_schema)
        return _finish_shard(self.out, self.name, rows, self._hashing, self.image_bytes)

    def abort(self) -> None:
        """Drop the unfinished tar (an error is already propagating)."""
        self._output.__exit__(ShardExportError, ShardExportError("aborted"), None)


class _TarWriter:
    """A USTAR archive streamed to a file object, byte for byte what ``tarfile`` writes for the same
    members with the fixed header fields below, without its per-member cost (a TarInfo copy and
    field-by-field encoding were ~70% of an export's CPU)."""

    def __init__(self, fh: _HashingWriter) -> None:
        self.fh = fh
        self.offset = 0

    def add(self, name: str, data: bytes) -> None:
        padding = -len(data) % tarfile.BLOCKSIZE
        self.fh.write(b"".join((_member_header(name, len(data)), data, tarfile.NUL * padding)))
        self.offset += tarfile.BLOCKSIZE + len(data) + padding

    def close(self) -> None:
        """The end-of-archive blocks, then zeros up to a whole record (as tarfile.close)."""
        self.offset += 2 * tarfile.BLOCKSIZE
        self.fh.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE + -self.offset % tarfile.RECORDSIZE))


def _member_header(name: str, size: int) -> bytes:
    """The USTAR header of a regular file: fixed fields (mode 0444, uid/gid 0, no owner names,
    mtime 0), so the same samples give the same bytes on any machine, any day."""
    encoded = name.encode(tarfile.ENCODING, "surrogateescape")
    if len(encoded) > tarfile.LENGTH_NAME or size >= 8**11:  # never for sample keys: tarfile's own way
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
        return info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    header = b"".join((
        encoded.ljust(100, tarfile.NUL), b"0000444\0", b"0000000\0", b"0000000\0", b"%011o\0" % size,
        b"00000000000\0", b"        ", tarfile.REGTYPE, tarfile.NUL * 100, tarfile.POSIX_MAGIC,
    )).ljust(tarfile.BLOCKSIZE, tarfile.NUL)
    return header[:148] + b"%06o\0" % sum(header) + header[155:]


def _finish_shard(out: Folder, name: str, rows: pa.Table, tar: _HashingWriter, image_bytes: int) -> ShardInfo:
    """Write the shard's parquet and _stats.json after its tar (already published)."""
    sha256 = tar.sha256.hexdigest()
    with out.publish(f"{name}.parquet") as fh:
        pq.write_table(rows, fh)
    stats = {
        "count": rows.num_rows,
        "successes": rows.num_rows,
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "status_dict": {"success": rows.num_rows},
        "bytes": tar.size,
        "image_bytes": image_bytes,
        "sha256": sha256,
    }
    out.write_bytes(f"{name}_stats.json", json.dumps(stats, indent=2, sort_keys=True).encode())
    return ShardInfo(name, out.file(f"{name}.tar"), rows.num_rows, tar.size, sha256)


def sample_key(member_name: str) -> str:
    """The sample key of a tar member: ``000030012.jpg`` -> ``000030012``."""
    return member_name.split(".", 1)[0]


def rewrite_shard(source: Folder | str | Path, name: str, drop_keys: set[str],
                  out_dir: Folder | str | Path | None = None) -> ShardInfo:
    """Rewrite shard ``name`` ("00001") of ``source`` without the samples ``drop_keys``: its tar,
    parquet and _stats.json.

    The kept members are copied in order with the same fixed headers, and keys are not renumbered,
    so anyone holding the same shard who drops the same keys gets a byte-identical tar (what
    ``pairlake release apply-diff`` relies on). Writes into ``out_dir`` (default: in place), each
    file atomically; the old tar is read front to back as it streams in.
    """
    src = as_folder(source)
    out = as_folder(out_dir) if out_dir is not None else src
    with src.open(f"{name}.parquet") as fh:
        rows = pq.read_table(fh)
    rows = rows.filter(pc.invert(pc.is_in(rows["key"], pa.array(sorted(drop_keys), pa.string()))))
    image_bytes = 0
    with src.stream(f"{name}.tar") as stream, tarfile.open(fileobj=stream, mode="r|") as old:
        with out.publish(f"{name}.tar") as fh:
            hashing = _HashingWriter(fh)
            new = _TarWriter(hashing)
            for member in old:
                if sample_key(member.name) in drop_keys:
                    continue
                data = old.extractfile(member).read()  # type: ignore[union-attr]
                if not member.name.endswith((".txt", ".json")):
                    image_bytes += len(data)
                new.add(member.name, data)
            new.close()
    return _finish_shard(out, name, rows, hashing, image_bytes)
