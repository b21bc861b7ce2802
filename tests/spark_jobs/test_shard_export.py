import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from gpu_jobs.clip_model import load_clip
from infra.config import ClipConfig
from infra.tables import SHARDS
from spark_jobs.shard_export import export_shards, manifest_table
from tests.imaging import captions_for, images_table

REPO = Path(__file__).resolve().parents[2]


def samples_table(n: int, seed: int = 0) -> pa.Table:
    """Kept pairs joined with their image bytes, as the export asset hands them over."""
    images = images_table(n, seed=seed)
    captions = captions_for(images)
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "uid": images["uid"],
            "url": images["url"],
            "caption": pa.array([captions[u] for u in images["uid"].to_pylist()]),
            "similarity": pa.array(rng.uniform(0.28, 0.4, n).astype(np.float32)),
            "width": images["width"],
            "height": images["height"],
            "original_width": pa.array([96] * n, pa.int32()),
            "original_height": pa.array([64] * n, pa.int32()),
            "sha256": pa.array([f"{i:064x}" for i in range(n)]),
            "sha1": pa.array([f"{i:040x}" for i in range(n)]),
            "md5": pa.array([f"{i:032x}" for i in range(n)]),
            "image": images["image"],
        }
    )


def shuffled(table: pa.Table, seed: int = 1) -> pa.Table:
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


def test_layout_keys_and_metadata(tmp_path):
    table = samples_table(10)
    shards = export_shards(shuffled(table), tmp_path, samples_per_shard=4)

    assert [s.shard for s in shards] == ["00000", "00001", "00002"]
    assert [s.samples for s in shards] == [4, 4, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}{suffix}" for s in ("00000", "00001", "00002") for suffix in (".tar", ".parquet", "_stats.json")
    )
    for info in shards:
        data = Path(info.path).read_bytes()
        assert info.bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()

    with tarfile.open(shards[1].path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["000010.jpg", "000010.txt", "000010.json"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o444)}
        meta = json.loads(tar.extractfile("000010.json").read())
        caption = tar.extractfile("000010.txt").read().decode()
    row = table.to_pylist()[4]  # sorted by uid: shard 1, position 0
    assert meta["key"] == "000010" and meta["uid"] == row["uid"] and meta["url"] == row["url"]
    assert caption == meta["caption"] == row["caption"]
    assert meta["similarity"] == pytest.approx(row["similarity"])
    assert (meta["width"], meta["original_width"], meta["sha256"], meta["md5"]) == (
        row["width"],
        row["original_width"],
        row["sha256"],
        row["md5"],
    )

    parquet = pq.read_table(tmp_path / "00001.parquet")
    assert parquet["key"].to_pylist() == ["000010", "000011", "000012", "000013"]
    assert parquet["uid"].to_pylist() == table["uid"].to_pylist()[4:8]
    assert parquet.schema.field("similarity").type == pa.float32()
    stats = json.loads((tmp_path / "00002_stats.json").read_text())
    assert stats["count"] == stats["successes"] == 2
    assert stats["bytes"] == shards[2].bytes and stats["sha256"] == shards[2].sha256


def test_same_rows_give_identical_shards(tmp_path):
    table = samples_table(10)
    first = export_shards(table, tmp_path / "a", samples_per_shard=3)
    second = export_shards(shuffled(table), tmp_path / "b", samples_per_shard=3)
    streamed = export_shards(table.to_batches(max_chunksize=4), tmp_path / "c", samples_per_shard=3)
    assert [s.sha256 for s in first] == [s.sha256 for s in second] == [s.sha256 for s in streamed]


def test_stream_must_be_sorted_by_uid(tmp_path):
    table = samples_table(6)
    with pytest.raises(ValueError, match="sorted by uid"):
        export_shards(shuffled(table).to_batches(max_chunksize=2), tmp_path / "a", samples_per_shard=2)
    doubled = pa.concat_tables([table.slice(0, 3), table.slice(2, 4)])
    with pytest.raises(ValueError, match="without duplicates"):
        export_shards(doubled, tmp_path / "b", samples_per_shard=2)


def test_failure_leaves_only_complete_shards(tmp_path):
    rows = samples_table(6).to_pydict()
    rows["image"][4] = None  # fails mid-way through the third shard
    with pytest.raises(ValueError, match=f"uid {rows['uid'][4]} has no image bytes"):
        export_shards(pa.table(rows), tmp_path, samples_per_shard=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}{suffix}" for s in ("00000", "00001") for suffix in (".tar", ".parquet", "_stats.json")
    )


def test_refuses_existing_shards_unless_overwrite(tmp_path):
    export_shards(samples_table(6), tmp_path, samples_per_shard=2)
    with pytest.raises(FileExistsError):
        export_shards(samples_table(2), tmp_path, samples_per_shard=2)
    shards = export_shards(samples_table(2), tmp_path, samples_per_shard=2, overwrite=True)
    assert len(shards) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json"]


def test_manifest_rows(tmp_path):
    shards = export_shards(samples_table(3), tmp_path, samples_per_shard=2)
    manifest = manifest_table(shards, export_id="e1", source_version=7)
    assert manifest.schema == SHARDS.schema
    assert manifest["shard"].to_pylist() == ["00000", "00001"]
    assert manifest["samples"].to_pylist() == [2, 1]


def test_webdataset_reads_shards_back(tmp_path):
    table = samples_table(7)
    export_shards(table, tmp_path, samples_per_shard=3)
    dataset = wds.WebDataset(f"{tmp_path}/{{00000..00002}}.tar", shardshuffle=False).decode("pil")
    samples = list(dataset)
    assert [s["json"]["uid"] for s in samples] == table["uid"].to_pylist()
    assert [s["txt"] for s in samples] == table["caption"].to_pylist()
    assert all(s["jpg"].size == (48, 48) for s in samples)


def test_open_clip_trainer_runs_on_exported_shards(tmp_path):
    """OpenCLIP's own trainer consumes the shards: the layout is what real training expects."""
    export_shards(samples_table(32), tmp_path / "shards", samples_per_shard=8)
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "gpu_jobs.train_entry",
        "--dataset-type", "webdataset",
        "--train-data", f"{tmp_path}/shards/{{00000..00003}}.tar",
        "--train-num-samples", "32",
        "--model", "pairlake-demo-tiny",
        "--device", "cpu",
        "--precision", "fp32",
        "--batch-size", "8",
        "--epochs", "1",
        "--workers", "0",
        "--warmup", "1",
        "--log-every-n-steps", "1",
        "--logs", str(logs),
        "--name", "smoke",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (logs / "smoke" / "out.log").read_text()
    assert "Train Epoch: 0 [32/32 (100%)]" in log and "Loss:" in log  # 4 steps, every sample read
    checkpoint = logs / "smoke" / "checkpoints" / "epoch_1.pt"
    # The trained checkpoint is what clip.checkpoint points at next: the scoring side must load it.
    clip = load_clip(ClipConfig(model="pairlake-demo-tiny", checkpoint=str(checkpoint), device="cpu"))
    assert clip.model_id.startswith("pairlake-demo-tiny/sha256:")


@pytest.mark.parametrize("sizes", [[0], [1, 511, 512, 513], [10_239, 10_240, 3]])
def test_tars_are_what_tarfile_writes_for_the_same_members(tmp_path, sizes):
    """The shard writer emits USTAR headers itself (speed); they must stay tarfile's, byte for byte."""
    from spark_jobs.shard_export import _HashingWriter, _TarWriter

    members = [(f"{i:09d}.{ext}", bytes(range(256)) * (size // 256) + b"x" * (size % 256))
               for i, size in enumerate(sizes) for ext in ("jpg", "txt")]
    members.append(("d" * 60 + "/é" + "n" * 50 + ".json", b"{}"))  # past 100 bytes: tarfile's own prefix split
    ours = tmp_path / "ours.tar"
    with ours.open("wb") as fh:
        writer = _TarWriter(_HashingWriter(fh))
        for name, data in members:
            writer.add(name, data)
        writer.close()
    theirs = tmp_path / "theirs.tar"
    with tarfile.open(theirs, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o444, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    assert ours.read_bytes() == theirs.read_bytes()
