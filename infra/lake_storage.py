"""The one way to reach the lake's bytes, a local folder or an S3-compatible bucket alike: the
options delta-rs gets and the pyarrow filesystem every other reader and writer uses.

Credentials are read from the environment variables that ``lake.storage_options`` names, each time
a lake is opened (on the driver and on every executor); they never pass through a config file, a
Spark option or a log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import pyarrow.fs as pafs

from infra.config import StorageOptions


def is_object_store(root: str) -> bool:
    return "://" in root


def _credentials(options: StorageOptions, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The credentials in the variables ``options`` names (of ``environ``, by default this process's)."""
    environ = os.environ if environ is None else environ
    named = {"access_key": options.access_key_id_env, "secret_key": options.secret_access_key_env,
             "session_token": options.session_token_env}
    return {key: environ[name] for key, name in named.items() if name and environ.get(name)}


def delta_options(options: StorageOptions) -> dict[str, str]:
    """delta-rs ``storage_options`` for an ``s3://`` table. Commits use conditional puts (etags), the
    safe way for concurrent writers on S3 and S3-compatible stores; never an unsafe rename."""
    out = {"conditional_put": "etag",
           "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": str(options.addressing_style == "virtual").lower()}
    if options.endpoint:
        out["AWS_ENDPOINT_URL"] = options.endpoint
    if options.region:
        out["AWS_REGION"] = options.region
    if options.allow_http:
        out["AWS_ALLOW_HTTP"] = "true"
    names = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
             "session_token": "AWS_SESSION_TOKEN"}
    out.update({names[key]: value for key, value in _credentials(options).items()})
    return out


def filesystem(root: str, options: StorageOptions, retries: int | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds ``root`` and ``root``'s path on it (no scheme, no trailing /);
    a store's requests are tried ``retries`` more times on transient errors (default: the SDK's)."""
    if not is_object_store(root):
        return pafs.LocalFileSystem(), str(Path(root).resolve())
    scheme, rest = root.split("://", 1)
    if scheme != "s3":
        raise ValueError(f"lake root {root!r}: only local folders and s3:// are supported")
    credentials = _credentials(options)
    if "secret_key" not in credentials or "access_key" not in credentials:
        credentials = {}  # the store's own chain finds them
    endpoint_scheme = options.endpoint.split("://", 1)[0] if options.endpoint else "https"
    fs = pafs.S3FileSystem(
        **credentials,
        region=options.region or None,
        endpoint_override=options.endpoint or None,
        scheme=endpoint_scheme,
        force_virtual_addressing=options.addressing_style == "virtual" and bool(options.endpoint),
        **({} if retries is None else {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=retries + 1)}),
    )
    return fs, rest.rstrip("/")


def to_json(options: StorageOptions) -> str:
    """For executors (a Spark option): endpoint and variable names only, no credential."""
    return json.dumps(dataclasses.asdict(options), sort_keys=True)


def from_json(text: str | None) -> StorageOptions:
    return StorageOptions(**json.loads(text)) if text else StorageOptions()


@contextlib.contextmanager
def atomic_output(path: str | Path, fs: pafs.FileSystem | None = None) -> Iterator[IO[bytes]]:
    """Write the file ``path`` so that no reader ever sees part of it: the one way every artefact
    (shards, indexes, heads, manifests, reports) is published.

    On a local disk: a hidden temp file beside it, fsynced, then renamed over ``path`` (and the
    rename made durable); removed if the block fails. On an object store a PUT lands whole when the
    stream closes; an object left by a failed block is deleted, and readers trust only objects that
    a manifest written last (or the Delta log) names, so keys are written once and manifests last.
    """
    path = str(path)
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        directory, name = os.path.split(path)
        # A plain open, not mkstemp: mkstemp's 0600 mode would survive the rename and lock other readers out.
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "xb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fd = os.open(directory or ".", os.O_RDONLY)  # the rename lives in the directory's metadata
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    stream = fs.open_output_stream(path, compression=None)  # bytes as given: no gzip for a .gz name
    try:
        yield stream  # type: ignore[misc]
    except BaseException:
        stream.close()
        with contextlib.suppress(OSError):
            fs.delete_file(path)
        raise
    stream.close()


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder of files on a filesystem: a local directory, or a prefix in a bucket (where
    "folders" exist only as the keys under them). Stages read and write artefacts through it, so
    the same code serves both. A Folder holds an open filesystem with its credentials, so it is
    never pickled: Spark tasks get the Lake (which reopens its filesystem there) and a layout key.
    """

    fs: pafs.FileSystem
    path: str  # on ``fs``: an absolute local path, or "bucket/prefix"

    @classmethod
    def local(cls, path: str | Path) -> "Folder":
        return cls(pafs.LocalFileSystem(), str(Path(path).resolve()))

    def __reduce__(self):
        if not self.is_local:
            raise TypeError("a Folder on an object store is not pickled (it holds credentials): "
                            "send the Lake and a layout key, and open the folder there")
        return (Folder.local, (self.path,))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def file(self, name: str) -> str:
        """The location of ``name`` in this folder, on ``self.fs``."""
        return f"{self.path}/{name}"

    def sub(self, name: str) -> "Folder":
        return Folder(self.fs, self.file(name))

    @property
    def local_path(self) -> Path:
        """This folder as a local path (only for a local folder: a bucket has none)."""
        if not self.is_local:
            raise ValueError(f"{self.path} is in an object store, not a local folder")
        return Path(self.path)

    def create(self) -> None:
        """Make the folder (a no-op in a bucket, where a key's prefix needs no creating)."""
        if self.is_local:
            self.fs.create_dir(self.path, recursive=True)

    def exists(self, name: str | None = None) -> bool:
        """Whether file ``name`` exists (or, without a name, whether the folder holds anything)."""
        if name is None:
            return self.fs.get_file_info(self.path).type == pafs.FileType.Directory
        return self.fs.get_file_info(self.file(name)).type == pafs.FileType.File

    def names(self, pattern: str = "*") -> list[str]:
        """The names of the files directly in this folder that match the glob ``pattern``, sorted."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        found = (info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File)
        return sorted(name for name in found if fnmatch.fnmatchcase(name, pattern))

    def folders(self) -> list[str]:
        """The names of the folders directly in this one, sorted."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.Directory)

    def size(self, name: str) -> int:
        return self.fs.get_file_info(self.file(name)).size

    def open(self, name: str) -> IO[bytes]:
        """``name`` for reading, seekable (tarfile and parquet seek)."""
        return self.fs.open_input_file(self.file(name))  # type: ignore[return-value]

    def stream(self, name: str) -> IO[bytes]:
        """``name`` for reading front to back (one GET on a store, where each seek of ``open`` is a
        request of its own)."""
        return self.fs.open_input_stream(self.file(name), compression=None, buffer_size=1 << 20)  # type: ignore[return-value]

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as fh:
            return fh.read()

    def publish(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Write ``name`` whole or not at all (``atomic_output``)."""
        self.create()
        return atomic_output(self.file(name), self.fs)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.publish(name) as fh:
            fh.write(data)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.file(name))

    def remove(self) -> None:
        """Delete the folder and everything under it (nothing if it does not exist)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self.path)

    def share(self, name: str, into: "Folder", as_name: str | None = None) -> None:
        """Make ``name`` also ``into/as_name`` without passing its bytes through this process: a
        hard link on a local disk (both names, one file), a server-side copy in a bucket."""
        target = into.file(as_name or name)
        into.create()
        if self.is_local and into.is_local:
            os.link(self.file(name), target)
        else:
            self.fs.copy_file(self.file(name), target)


def as_folder(where: "Folder | str | Path") -> Folder:
    """A Folder as it is; a path as the local folder it names (a user's copy of shards)."""
    return where if isinstance(where, Folder) else Folder.local(where)


def s3_client(options: StorageOptions, environ: Mapping[str, str] | None = None):
    """A botocore S3 client for what pyarrow's filesystem does not offer (bucket versioning,
    conditional writes), with the lake's endpoint and credentials."""
    import botocore.config
    import botocore.session

    credentials = _credentials(options, environ)
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=options.endpoint or None, region_name=options.region or None,
        aws_access_key_id=credentials.get("access_key"), aws_secret_access_key=credentials.get("secret_key"),
        aws_session_token=credentials.get("session_token"),
        config=botocore.config.Config(s3={"addressing_style": options.addressing_style},
                                      retries={"max_attempts": 3, "mode": "standard"}),
    )


def bucket_and_key(root: str, key: str = "") -> tuple[str, str]:
    """``s3://bucket/prefix`` + a layout key -> (bucket, object key)."""
    bucket, _, prefix = root.split("://", 1)[1].partition("/")
    return bucket, "/".join(part for part in (prefix.strip("/"), key) if part)


def bucket_versioning(root: str, options: StorageOptions) -> str | None:
    """The bucket's versioning status ("Enabled", "Suspended") or None when it was never turned on.

    A versioned bucket keeps every deleted object as a noncurrent version, so a removal's purge
    could not erase the bytes; the lake refuses such a bucket (``Lake.ensure_writable``)."""
    return s3_client(options).get_bucket_versioning(Bucket=bucket_and_key(root)[0]).get("Status")
