"""atomic_output, the one way an artefact is published: on a disk and in a bucket of a real
S3-compatible server, a reader sees the old file or the whole new one, never a part, and a failed
write leaves nothing behind."""

import os
import stat

import pyarrow.fs as pafs
import pytest

from infra.lake_storage import atomic_output


class Boom(Exception):
    pass


def test_on_a_disk_the_old_file_stays_until_the_new_one_is_whole(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with atomic_output(target) as fh:
        fh.write(b"new, part one; ")
        assert target.read_bytes() == b"old"  # a reader meanwhile
        fh.write(b"part two")
    assert target.read_bytes() == b"new, part one; part two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temp file left
    assert stat.S_IMODE(os.stat(target).st_mode) & 0o044  # readable by others, unlike mkstemp's 0600


def test_on_a_disk_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "shard.tar"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_output(target) as fh:
            fh.write(b"half")
            raise Boom
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.tar"]


def test_in_a_bucket_the_object_lands_whole_at_close_or_not_at_all(s3_lake):
    fs, base = s3_lake.filesystem
    fs.create_dir(base)
    key = f"{base}/releases/r/v1/000000.tar"

    def exists() -> bool:
        return fs.get_file_info(key).type == pafs.FileType.File

    with atomic_output(key, fs) as fh:
        fh.write(b"x" * 100_000)
        assert not exists()  # nothing visible before the close
        fh.write(b"y")
    with fs.open_input_file(key) as fh:
        assert fh.read() == b"x" * 100_000 + b"y"
    with pytest.raises(Boom):
        with atomic_output(f"{base}/releases/r/v1/000001.tar", fs) as fh:
            fh.write(b"half")
            raise Boom
    assert fs.get_file_info(f"{base}/releases/r/v1/000001.tar").type == pafs.FileType.NotFound
