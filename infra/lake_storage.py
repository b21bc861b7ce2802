"""The one way to reach the lake's bytes, a local folder or an S3-compatible bucket alike: the
options delta-rs gets and the pyarrow filesystem every other reader and writer uses.

Credentials are read from the environment variables that ``lake.storage_options`` names, each time
a lake is opened (on the driver and on every executor); they never pass through a config file, a
Spark option or a log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


def filesystem(root: str, options: StorageOptions) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds ``root`` and ``root``'s path on it (no scheme, no trailing /)."""
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
    stream = fs.open_output_stream(path)
    try:
        yield stream  # type: ignore[misc]
    except BaseException:
        stream.close()
        with contextlib.suppress(OSError):
            fs.delete_file(path)
        raise
    stream.close()


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
