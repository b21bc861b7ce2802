"""Release shards written by Spark tasks are the single-process export's, byte for byte."""

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from infra.delta_store import Lake, Lineage
from infra.tables import CURATED, IMAGES
from spark_jobs.shard_export import ShardExportError, export_shards, rewrite_shard
from spark_jobs.shard_export_job import export_variant_shards, rewrite_shards

NOW = dt.datetime(2026, 11, 1, 12, 30, tzinfo=dt.timezone.utc)
WARC_FILES = ("a.warc.gz", "b.warc.gz", "c.warc.gz")


def _lake(tmp_path, n: int, seed: int = 0) -> Lake:
    """Curated pairs in two variants over three WARC files, uids spread over many prefixes, image
    bytes of varied lengths; a few failed downloads and images outside the variant around them."""
    rng = np.random.default_rng(seed)
    lake = Lake(str(tmp_path / "lake"))
    uids = [hashlib.sha256(f"pair {i}".encode()).hexdigest()[:32] for i in range(n)]
    curated, images = [], []
    for i, uid in enumerate(uids):
        warc = WARC_FILES[i % 3]
        url = f"http://h{i % 5}.example/{i}.jpg"
        if i % 4:  # a quarter of the pairs is only in the other variant
            curated.append({"variant": "safe", "uid": uid, "warc_file": warc, "url": url, "caption": f"caption {i} é",
                            "similarity": float(rng.uniform(0.28, 0.4)), "model_id": "m", "language": "en",
                            "punsafe": float(rng.uniform()), "width": 64, "height": 48, "cluster_size": 1 + i % 3})
        curated.append({"variant": "research", "uid": uid, "warc_file": warc, "url": url, "caption": f"c {i}",
                        "similarity": 0.3, "model_id": "m", "cluster_size": 1})
        images.append({"uid": uid, "url": url, "warc_file": warc, "status": "ok", "retryable": False, "attempts": 1,
                        "fetched_at": NOW, "image": rng.bytes(int(rng.integers(50, 400))), "width": 64, "height": 48})
    images += [{"uid": f"failed{i}", "url": f"http://h.example/x{i}", "warc_file": "a.warc.gz", "status": "failed",
                "error": "http_404", "retryable": False, "attempts": 1, "fetched_at": NOW} for i in range(3)]
    lake.overwrite(CURATED, pa.Table.from_pylist(curated, schema=CURATED.schema), Lineage())
    lake.replace_partitions(IMAGES, pa.Table.from_pylist(images, schema=IMAGES.schema), list(WARC_FILES), Lineage())
    return lake


def _single_process(lake: Lake, variant: str, out, samples_per_shard: int):
    curated = lake.read(CURATED, filter=pc.field("variant") == variant).drop_columns(["variant"])
    images = lake.read(IMAGES, columns=["uid", "image"], filter=pc.field("status") == "ok")
    return export_shards(curated.join(images, "uid"), out, samples_per_shard)


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("samples_per_shard", [7, 1000])
def test_spark_tasks_write_the_single_process_shards_byte_for_byte(spark, tmp_path, samples_per_shard):
    lake = _lake(tmp_path, 120)
    expected = _single_process(lake, "safe", tmp_path / "single", samples_per_shard)
    got = export_variant_shards(spark, lake, "safe", str(tmp_path / "spark"), samples_per_shard)
    assert len(got) == len(expected) == -(-90 // samples_per_shard)
    assert [(s.shard, s.samples, s.bytes, s.sha256) for s in got] == [(s.shard, s.samples, s.bytes, s.sha256)
                                                                       for s in expected]
    tars = {name: data for name, data in _files(tmp_path / "spark").items() if name.endswith(".tar")}
    assert tars == {name: data for name, data in _files(tmp_path / "single").items() if name.endswith(".tar")}
    assert all(hashlib.sha256(tars[f"{s.shard}.tar"]).hexdigest() == s.sha256 for s in got)


def test_the_pinned_versions_are_exported(spark, tmp_path):
    lake = _lake(tmp_path, 40)
    curated_version, images_version = lake.version(CURATED), lake.version(IMAGES)
    expected = _single_process(lake, "safe", tmp_path / "single", 10)
    _lake(tmp_path, 60, seed=1)  # the tables move on
    got = export_variant_shards(spark, lake, "safe", str(tmp_path / "spark"), 10,
                                curated_version=curated_version, images_version=images_version)
    assert [s.sha256 for s in got] == [s.sha256 for s in expected]


def test_an_empty_variant_writes_no_shard(spark, tmp_path):
    lake = _lake(tmp_path, 8)
    assert export_variant_shards(spark, lake, "no-such-variant", str(tmp_path / "out"), 5) == []


def test_a_curated_sample_without_image_bytes_is_one_clear_error(spark, tmp_path):
    lake = _lake(tmp_path, 20)
    gone = lake.read(CURATED, filter=pc.field("variant") == "research")["uid"][3].as_py()
    lake.replace_partitions(IMAGES, lake.read(IMAGES).filter(pc.not_equal(pc.field("uid"), gone)), list(WARC_FILES),
                            Lineage())
    with pytest.raises(ShardExportError, match=f"sample uid {gone} has no image bytes") as raised:
        export_variant_shards(spark, lake, "research", str(tmp_path / "out"), 5)
    assert "\n" not in str(raised.value)


def test_shards_are_rewritten_in_parallel_as_one_at_a_time(spark, tmp_path):
    lake = _lake(tmp_path, 60)
    shards = export_variant_shards(spark, lake, "research", str(tmp_path / "v1"), 10)
    drops = {s.shard: [f"{s.shard}{k:d}" for k in (0, 3, 9)] for s in shards[::2]}
    drop = spark.createDataFrame([(shard, key) for shard, keys in drops.items() for key in keys], "shard string, key string")
    parallel = rewrite_shards(spark, lake, drop, str(tmp_path / "v1"), str(tmp_path / "parallel"))
    serial = [rewrite_shard(tmp_path / "v1", shard, set(keys), tmp_path / "serial")
              for shard, keys in sorted(drops.items())]
    assert [(s.shard, s.samples, s.sha256) for s in parallel] == [(s.shard, s.samples, s.sha256) for s in serial]
    assert [s.samples for s in parallel] == [7, 7, 7]
    assert _files(tmp_path / "parallel") == _files(tmp_path / "serial")
