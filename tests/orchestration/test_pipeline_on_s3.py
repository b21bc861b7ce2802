"""The whole demo graph with the lake in a bucket of a real S3-compatible server (SeaweedFS on
127.0.0.1): the same tables, index and release as the session's pipeline on a local folder; then
an opt-out through the inbox sensor leaves no byte of the removed sample in any object, and the
CLI (search, lineage, re-release, apply-diff from the bucket) works against it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from gpu_jobs.knn_index import index_folder, metadata_name
from infra.config import PairlakeConfig, load_config
from infra.delta_store import Lake
from infra.tables import CURATED, IMAGES, SAMPLE_TABLES, SHARDS
from orchestration.demo import import_demo_blocklists
from orchestration.optout_requests import inbox_dir, submit_request
from orchestration.runner import materialize_all, tick_sensor
from spark_jobs import release
from tests.lake_scan import files_holding
from tests.orchestration.pipeline_run import SNAPSHOT, snapshot

BUCKET = "whole-graph"


@dataclass
class BucketRun:
    lake: Lake
    config: PairlakeConfig
    config_path: Path
    instance: dg.DagsterInstance
    runs: list[str]
    tables: dict[str, pa.Table]  # after the graph, before the opt-out
    holder: Path  # a user's copy of the release, downloaded before the opt-out


@pytest.fixture(scope="module")
def bucket_run(pipeline, s3_endpoint, tmp_path_factory) -> Iterator[BucketRun]:
    """The session pipeline's config with its lake at s3://whole-graph/lake: the same crawl, the
    same image server (uids hold its port), one pass of the graph."""
    root = tmp_path_factory.mktemp("bucket-run")
    s3_endpoint.create_bucket(BUCKET)
    text = pipeline.config_path.read_text()
    local_root = f'root = "{pipeline.lake_root}"'
    assert local_root in text
    options = s3_endpoint.storage_options()
    config_path = root / "pairlake.toml"
    config_path.write_text(
        text.replace(local_root, f'root = "s3://{BUCKET}/lake"').replace("[release]\n", "[release]\nrerelease_debounce_s = 0\n")
        + f'\n[lake.storage_options]\nendpoint = "{options.endpoint}"\nregion = "{options.region}"\n'
        'allow_http = true\naddressing_style = "path"\n[optout]\nmin_similarity = 0.998\n')
    previous = os.environ.get("PAIRLAKE_CONFIG")
    os.environ["PAIRLAKE_CONFIG"] = str(config_path)
    try:
        config = load_config(config_path)
        lake = Lake.of(config.lake)
        with dg.instance_for_test() as instance:
            import_demo_blocklists(config, pipeline.lake_root.parent / "crawl", instance)
            runs = materialize_all(instance)
            last = release.latest(lake, config.release.name)
            holder = root / "holder"
            with lake.local_copy(last["path"]) as copied:
                shutil.copytree(copied, holder)
            yield BucketRun(lake, config, config_path, instance, runs, snapshot(lake), holder)
    finally:
        if previous is None:
            os.environ.pop("PAIRLAKE_CONFIG", None)
        else:
            os.environ["PAIRLAKE_CONFIG"] = previous


def _uids(table: pa.Table) -> list[str]:
    return sorted(table["uid"].to_pylist()) if "uid" in table.column_names else []


def test_the_graph_in_a_bucket_makes_the_tables_of_the_graph_in_a_folder(pipeline, bucket_run):
    assert all(bucket_run.instance.get_run_by_id(r).status == dg.DagsterRunStatus.SUCCESS for r in bucket_run.runs)
    for spec in SNAPSHOT:
        local, bucket = pipeline.first[spec.name], bucket_run.tables[spec.name]
        assert (spec.name, bucket.num_rows, _uids(bucket)) == (spec.name, local.num_rows, _uids(local))
    # Release shards byte for byte (by checksum), at the same keys under the root.
    columns = ["export_id", "shard", "path", "samples", "sha256"]
    assert bucket_run.tables[SHARDS.name].select(columns).sort_by("path").equals(
        pipeline.first[SHARDS.name].select(columns).sort_by("path"))
    # The index: built in the bucket over the uids of the folder's (whose second pass lost the
    # sample a late hash list named).
    variant = bucket_run.config.index.variant
    in_bucket_folder, in_folder_folder = index_folder(bucket_run.lake, variant), index_folder(pipeline.lake, variant)
    with in_bucket_folder.open(metadata_name(in_bucket_folder)) as fh:
        in_bucket = pq.read_table(fh)["uid"].to_pylist()
    in_folder = pq.read_table(in_folder_folder.local_path / metadata_name(in_folder_folder))["uid"].to_pylist()
    assert len(in_bucket) == len(set(in_bucket)) > 0
    assert set(in_bucket) - {pipeline.late_uid} == set(in_folder)
    # Nothing of the lake went to a local folder named after the URI.
    assert not Path("s3:").exists()


def test_an_opt_out_in_a_bucket_leaves_no_byte_of_the_sample_and_the_cli_works(bucket_run, capsys):
    from orchestration.cli import main

    config, lake = bucket_run.config, bucket_run.lake
    images = bucket_run.tables[IMAGES.name]
    members = set(pa.concat_tables(release.shard_members(bucket_run.holder))["uid"].to_pylist())
    released = sorted(set(bucket_run.tables[CURATED.name]["uid"].to_pylist()) & members)
    uid = released[0]
    row = images.filter(pc.equal(images["uid"], uid)).to_pylist()[0]
    assert files_holding(lake, row["url"].encode()) and files_holding(lake, row["image"])  # before: everywhere

    submit_request(config, {"request_id": "bucket-url", "kind": "url", "value": row["url"], "requester": "t",
                            "reason": "my photo"})
    runs = tick_sensor("optout_inbox_sensor", bucket_run.instance)
    assert len(runs) == 1 and bucket_run.instance.get_run_by_id(runs[0]).status == dg.DagsterRunStatus.SUCCESS
    assert inbox_dir(config).names("*.json") == []
    for spec in SAMPLE_TABLES:
        assert uid not in lake.read(spec, columns=["uid"])["uid"].to_pylist(), spec.name
    # Every object under the root: tables and their history, shards, index, inbox, reports.
    assert files_holding(lake, row["url"].encode()) == []
    assert files_holding(lake, row["image"]) == []

    # The re-release, and the diff applied from the bucket to the copy downloaded before.
    runs = tick_sensor("rerelease_sensor", bucket_run.instance)
    assert len(runs) == 1
    last = release.latest(lake, config.release.name)
    assert last["kind"] == "rerelease" and last["removed"] == 1
    version_uri = lake.uri_of(last["path"])
    cli = ["--config", str(bucket_run.config_path)]
    assert main([*cli, "release", "apply-diff", version_uri, str(bucket_run.holder)]) == 0
    with lake.local_copy(last["path"]) as published:
        for tar in sorted(published.glob("*.tar")):
            assert (bucket_run.holder / tar.name).read_bytes() == tar.read_bytes()
    assert uid not in pa.concat_tables(release.shard_members(bucket_run.holder))["uid"].to_pylist()

    capsys.readouterr()
    assert main([*cli, "lineage", uid]) == 0
    described = capsys.readouterr().out
    assert "bucket-url" in described and row["url"] not in described
    assert main([*cli, "search", "a red circle", "-k", "50"]) == 0
    found = capsys.readouterr().out
    assert "http" in found and row["url"] not in found
