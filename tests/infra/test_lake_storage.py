"""atomic_output, the one way an artefact is published, and Folder, the one way artefacts are read and
written: on a disk and in a bucket of a real
S3-compatible server, a reader sees the old file or the whole new one, never a part, and a failed
write leaves nothing behind."""

import gzip
import os
import pickle
import stat

import pyarrow.fs as pafs
import pytest

from infra import lake_layout
from infra.lake_storage import Folder, atomic_output


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


@pytest.fixture(params=["folder", "bucket"])
def lake_folder(request, tmp_path):
    """The same Folder operations on a local folder and on a bucket of the real S3 server."""
    if request.param == "folder":
        return Folder.local(tmp_path / "lake" / "releases" / "r")
    lake = request.getfixturevalue("s3_lake")
    return lake.folder(lake_layout.release("r"))


def test_a_folder_reads_lists_shares_and_deletes_alike_on_disk_and_in_a_bucket(lake_folder):
    v1, v2 = lake_folder.sub("v1"), lake_folder.sub("v2")
    assert not v1.exists() and v1.names() == [] and lake_folder.folders() == []
    v1.write_bytes("00000.tar", b"tar bytes")
    v1.write_bytes("00001.tar", b"more")
    v1.write_bytes("manifest.json", b"{}")
    assert v1.exists() and v1.exists("00000.tar") and not v1.exists("00002.tar")
    assert v1.names("[0-9]*.tar") == ["00000.tar", "00001.tar"]
    assert v1.size("00001.tar") == 4
    with v1.open("00000.tar") as fh:
        fh.seek(4)
        assert fh.read() == b"bytes"
    v1.share("00000.tar", v2)
    assert v2.read_bytes("00000.tar") == b"tar bytes"
    v1.delete("00000.tar")
    v1.delete("00000.tar")  # already gone: nothing to do
    assert v2.read_bytes("00000.tar") == b"tar bytes"  # the shared copy stays
    assert lake_folder.folders() == ["v1", "v2"]
    # pyarrow would gzip a ".gz" name on the way in and gunzip it on the way out: bytes stay as given.
    packed = gzip.compress(b"crawl-data/a.warc.gz\n")
    v1.write_bytes("warc.paths.gz", packed)
    assert v1.size("warc.paths.gz") == len(packed) and v1.read_bytes("warc.paths.gz") == packed
    with v1.stream("warc.paths.gz") as fh:
        assert fh.read() == packed
    v1.remove()
    assert not v1.exists() and lake_folder.folders() == ["v2"]


def test_a_bucket_folder_is_never_pickled_with_its_credentials(s3_lake, tmp_path):
    with pytest.raises(TypeError, match="holds credentials"):
        pickle.dumps(s3_lake.folder("releases"))
    local = Folder.local(tmp_path)
    assert pickle.loads(pickle.dumps(local)) == Folder.local(tmp_path)
