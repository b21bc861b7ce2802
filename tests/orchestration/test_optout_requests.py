"""Opt-out removal end to end on a copy of the session's demo lake: requests through the inbox
sensor, a byte scan of every file under the lake root, the re-release and its diff, and a later
crawl that never fetches or ingests the removed images again."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import requests
from PIL import Image

from infra.config import load_config
from infra.delta_store import Lake
from gpu_jobs.embedding_format import embeddings_from_column
from infra.tables import CANDIDATES, CLIP_SCORES, CURATED, IMAGES, REMOVALS, SAMPLE_TABLES, STAGE_STATS
from orchestration.optout_requests import inbox_dir, rejected_dir, request_status, submit_request
from orchestration.resources import PairlakeResource
from orchestration.runner import materialize_all, tick_sensor
from orchestration.sensors import optout_inbox_sensor
from spark_jobs import release
from tests.lake_scan import files_holding
from tests.search_service import running_search_service


@dataclass
class Removal:
    lake: Lake
    root: Path
    config_path: Path
    instance: dg.DagsterInstance
    before: dict  # uid -> {"url", "image", "original"} of every uid the requests should remove
    targets: dict  # request id -> uid(s) it names
    holder: Path  # a downstream copy of the release taken before the removal
    release_before: dict
    sensor_keys: list[str]
    runs: list[str]
    search_url: str  # the search service, started before the removal and running since
    queries: dict  # uid -> {"vector", "caption"} of every removed uid, to query the service by
    found_before: dict  # uid -> the first result of an embedding query for it, before the removal


def _row(table, uid):
    return table.filter(pc.equal(table["uid"], uid)).to_pylist()[0]


@pytest.fixture(scope="module")
def removal(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("removal")
    shutil.copytree(pipeline.lake_root, root / "lake")
    config_path = root / "pairlake.toml"
    config_path.write_text(
        pipeline.config_path.read_text().replace(str(pipeline.lake_root), str(root / "lake"))
        + "\n[optout]\nmin_similarity = 0.998\n"
    )
    previous = os.environ.get("PAIRLAKE_CONFIG")
    os.environ["PAIRLAKE_CONFIG"] = str(config_path)
    config = load_config(config_path)
    lake = Lake(str(root / "lake"))
    images = lake.read(IMAGES)
    last = release.latest(lake, config.release.name)
    members = pa.concat_tables(release.shard_members(lake.path(last["path"])))["uid"].to_pylist()
    truth = pipeline.truth["images"]
    plain = [u for u in sorted(members) if truth[_row(images, u)["url"]]["kind"] in ("match", "relative")]
    by_url, by_md5 = plain[0], plain[1]
    group = sorted(u for u, e in truth.items() if e.get("group") == "near_duplicate-0" and e["download"] == "ok")
    group_uids = sorted(images.filter(pc.is_in(images["url"], pa.array(group)))["uid"].to_pylist())
    example = root / "example.jpg"  # the first member re-encoded: other bytes, same picture
    original = pipeline.server.resources["/" + group[0].split("/", 3)[3]].body
    Image.open(io.BytesIO(original)).convert("RGB").save(example, quality=90)

    removed = {by_url, by_md5, *group_uids}
    before = {}
    for uid in removed:
        row = _row(images, uid)
        before[uid] = {"url": row["url"].encode(), "image": row["image"],
                       "original": pipeline.server.resources["/" + row["url"].split("/", 3)[3]].body}
    holder = root / "holder"
    shutil.copytree(lake.path(last["path"]), holder)

    submit_request(config, {"request_id": "by-url", "kind": "url", "value": _row(images, by_url)["url"],
                            "requester": "ticket-1", "reason": "my photo"})
    submit_request(config, {"request_id": "by-md5", "kind": "md5", "value": _row(images, by_md5)["md5"],
                            "requester": "ticket-2", "reason": "hash from a takedown notice"})
    submit_request(config, {"request_id": "by-image", "kind": "image", "requester": "ticket-3",
                            "reason": "this picture and its copies"}, image=example)
    inbox_dir(config).write_bytes("broken.json", json.dumps({"kind": "phone", "value": "x", "requester": "a",
                                                             "reason": "b"}).encode())
    scores = lake.read(CLIP_SCORES, filter=pc.field("uid").isin(sorted(removed)))
    vectors = embeddings_from_column(scores["image_embedding"], scores["embedding_dim"][0].as_py())
    for uid, vector in zip(scores["uid"].to_pylist(), vectors):
        # As a flat index stores it (float32): the index files must lose it too. (Caption vectors
        # repeat across pairs that share a caption, so only the searches check those.)
        before[uid]["embedding"] = vector.tobytes()  # float16, as clip_scores stores it
        before[uid]["vector"] = vector.astype(np.float32).tobytes()
    # Only curated representatives are indexed (a near copy is not): the scan finds those.
    assert any(files_holding(root / "lake" / "indexes", before[uid]["vector"]) for uid in removed)
    captions = lake.read(CANDIDATES, columns=["uid", "caption"], filter=pc.field("uid").isin(sorted(removed)))
    queries = {u: {"vector": [float(x) for x in v], "caption": dict(zip(*captions.to_pydict().values()))[u]}
               for u, v in zip(scores["uid"].to_pylist(), vectors)}
    try:
        with contextlib.ExitStack() as stack:
            search_url = stack.enter_context(running_search_service(config))
            found_before = {u: _search(search_url, {"embedding_input": q["vector"]})[0] for u, q in queries.items()}
            instance = stack.enter_context(dg.instance_for_test())
            with dg.build_sensor_context(instance=instance, resources={"pairlake": PairlakeResource()}) as context:
                keys = [r.run_key for r in optout_inbox_sensor.evaluate_tick(context).run_requests]
            runs = tick_sensor("optout_inbox_sensor", instance)
            yield Removal(lake, root, config_path, instance, before,
                          {"by-url": by_url, "by-md5": by_md5, "by-image": group_uids},
                          holder, last, keys, runs, search_url, queries, found_before)
    finally:
        if previous is None:
            os.environ.pop("PAIRLAKE_CONFIG", None)
        else:
            os.environ["PAIRLAKE_CONFIG"] = previous


def _search(url: str, query: dict) -> list[dict]:
    """Every result of ``query`` from the search service, with no filter."""
    body = {"modality": "image", "indice_name": "research", "num_images": 500, "num_result_ids": 500,
            "deduplicate": False, "use_safety_model": False, "use_violence_detector": False, **query}
    response = requests.post(f"{url}/knn-service", data=json.dumps(body), timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_running_search_service_never_returns_a_removed_image_by_any_query(removal):
    old_ids = {top["id"] for u, top in removal.found_before.items() if top["uid"] == u}
    assert old_ids  # before the removal, the service found them
    urls = {n["url"].decode() for n in removal.before.values()}
    for uid, query in removal.queries.items():
        needles = removal.before[uid]
        for mode in ({"embedding_input": query["vector"]}, {"text": query["caption"]},
                     {"image": base64.b64encode(needles["image"]).decode()},
                     {"image": base64.b64encode(needles["original"]).decode()},
                     {"image_url": needles["url"].decode()}):
            for modality in ("image", "text"):
                results = _search(removal.search_url, {**mode, "modality": modality})
                assert results and not {r["uid"] for r in results} & set(removal.before), (uid, list(mode), modality)
                assert not {r["url"] for r in results} & urls
    # Nor by the ids they had: no metadata, no image, no lineage.
    ids = sorted(old_ids)
    metadata = requests.post(f"{removal.search_url}/metadata", data=json.dumps({"ids": ids, "indice_name": "research"}),
                             timeout=30)
    assert metadata.json() == []
    for i in ids:
        for path in ("image", "lineage"):
            assert requests.get(f"{removal.search_url}/{path}/research/{i}", timeout=30).status_code == 404


def test_the_sensor_launches_one_run_per_request_file(removal):
    assert sorted(k.split(":")[0] for k in removal.sensor_keys) == ["broken.json", "by-image.json", "by-md5.json",
                                                                    "by-url.json"]
    assert all(len(k.split(":")[1]) == 16 for k in removal.sensor_keys)  # name + a sha256 of the bytes
    assert len(removal.runs) == 4
    for run_id in removal.runs:
        assert removal.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    event = removal.instance.get_latest_materialization_event(dg.AssetKey("optout_requests"))
    assert event.asset_materialization.metadata["status"].value in ("applied", "rejected")
    config = load_config(removal.config_path)
    assert inbox_dir(config).names("*.json") == []  # applied requests leave the inbox
    assert tick_sensor("optout_inbox_sensor", removal.instance) == []


def test_a_malformed_request_is_moved_aside_with_its_reason(removal):
    config = load_config(removal.config_path)
    assert rejected_dir(config).exists("broken.json")
    assert b"kind must be one of" in rejected_dir(config).read_bytes("broken.json.reason.txt")
    rows = {r["request_id"]: r for r in request_status(load_config(removal.config_path))}
    assert rows["broken"]["status"] == "rejected" and "kind must be one of" in rows["broken"]["rejection"]


def test_every_named_sample_and_every_copy_is_removed_from_every_table(removal):
    rows = {r["request_id"]: r for r in request_status(load_config(removal.config_path))}
    for request_id in ("by-url", "by-md5", "by-image"):
        assert rows[request_id]["status"] == "applied" and rows[request_id]["matched"] >= 1, request_id
        assert rows[request_id]["target"] is None  # exact URLs and hashes are kept as digests only
    removed = set(removal.lake.read(REMOVALS)["uid"].to_pylist())
    assert set(removal.before) <= removed
    assert len(removal.targets["by-image"]) >= 2  # the near-duplicate group, found by similarity
    matched_by = dict(zip(removal.lake.read(REMOVALS)["uid"].to_pylist(), removal.lake.read(REMOVALS)["matched_by"].to_pylist()))
    assert {matched_by[u] for u in removal.targets["by-image"]} == {"image_similarity"}
    for spec in SAMPLE_TABLES:
        left = set(removal.lake.read(spec, columns=["uid"])["uid"].to_pylist())
        assert not left & removed, spec.name
    curated = removal.lake.read(CURATED)
    assert curated.num_rows > 0  # the rest of the lake is intact


def test_a_byte_scan_of_the_lake_finds_neither_the_images_nor_the_urls(removal):
    leftovers = {}
    for uid, needles in removal.before.items():
        for what, needle in needles.items():
            found = files_holding(removal.root / "lake", needle)
            if found:
                leftovers[f"{uid}/{what}"] = found
    assert leftovers == {}
    # The scan does find them where they still are: the downstream copy taken before the removal.
    assert any(files_holding(removal.holder, n["image"]) for n in removal.before.values())


def test_the_index_and_search_still_work_without_the_removed_images(removal):
    from gpu_jobs.retrieval import LakeIndexes, QueryEncoder, SearchOptions

    config = load_config(removal.config_path)
    index = LakeIndexes(removal.lake, config.clip).get(config.index.variant)
    assert not set(index.metadata["uid"].to_pylist()) & set(removal.before)
    assert index.search(QueryEncoder(config.clip, config.download).text("a red circle"), SearchOptions(5, 5))


def test_rerelease_publishes_a_diff_that_cleans_an_old_copy(removal):
    config = load_config(removal.config_path)
    runs = removal.instance.get_runs()
    with dg.build_sensor_context(instance=removal.instance, resources={"pairlake": PairlakeResource()}) as context:
        from orchestration.sensors import rerelease_sensor

        waiting = rerelease_sensor.evaluate_tick(context)
    assert waiting.skip_message and "waiting" in waiting.skip_message  # the debounce holds it back
    impatient = removal.root / "no-debounce.toml"  # the same config with no debounce
    impatient.write_text(removal.config_path.read_text().replace("[release]\n", "[release]\nrerelease_debounce_s = 0\n"))
    os.environ["PAIRLAKE_CONFIG"] = str(impatient)
    try:
        tick_sensor("rerelease_sensor", removal.instance)
    finally:
        os.environ["PAIRLAKE_CONFIG"] = str(removal.config_path)
    assert len(removal.instance.get_runs()) == len(runs) + 1
    last = release.latest(removal.lake, config.release.name)
    assert (last["version"], last["kind"]) == (removal.release_before["version"] + 1, "rerelease")
    new_dir = removal.lake.path(last["path"])
    diff = json.loads((new_dir / "diff.json").read_text())
    in_release = set(pa.concat_tables(release.shard_members(removal.holder))["uid"].to_pylist()) & set(removal.before)
    assert diff["applicable"] and diff["removed"] == len(in_release) > 0
    assert diff["removed_by_reason"] == {"opt-out": len(in_release)}
    for needle in removal.before.values():
        assert needle["url"] not in (new_dir / "diff.json").read_bytes() + (new_dir / "diff.parquet").read_bytes()
    release.apply_diff(new_dir / "diff.json", removal.holder)
    for tar in sorted(new_dir.glob("*.tar")):
        assert (removal.holder / tar.name).read_bytes() == tar.read_bytes()


def test_cli_status_release_list_and_lineage_of_a_removed_uid(removal, capsys):
    from orchestration.cli import main

    config = ["--config", str(removal.config_path)]
    assert main([*config, "optout", "status"]) == 0
    out = capsys.readouterr().out
    assert "by-url" in out and "applied" in out and "rejected" in out
    assert main([*config, "release", "list"]) == 0
    assert "demo-en-research" in capsys.readouterr().out
    assert main([*config, "lineage", removal.targets["by-url"]]) == 0
    out = capsys.readouterr().out
    assert "by-url" in out and "ticket-1" in out and "://" not in out
    assert main([*config, "optout", "submit", "--url", "ftp://x.example/a.jpg", "--requester", "a", "--reason", "b"]) == 2
    assert "http(s) URL" in capsys.readouterr().err


def test_a_later_crawl_never_fetches_or_ingests_the_removed_images(removal, pipeline):
    seen = len(pipeline.server.access_log)
    materialize_all(removal.instance)
    requested = {path for _, path in pipeline.server.access_log[seen:]}
    removed_paths = {"/" + n["url"].decode().split("/", 3)[3] for n in removal.before.values()}
    url_removed = {"/" + removal.before[removal.targets["by-url"]]["url"].decode().split("/", 3)[3]}
    assert not requested & url_removed
    urls = set(removal.lake.read(CANDIDATES, columns=["url"])["url"].to_pylist())
    assert not {n["url"].decode() for n in removal.before.values()} & urls
    stats = removal.lake.read(STAGE_STATS)
    opted = stats.filter(pc.equal(stats["metric"], "removed_by_request"))
    assert sum(opted["value"].to_pylist()) >= len(removed_paths)
    for uid, needles in removal.before.items():
        assert files_holding(removal.root / "lake", needles["url"]) == [], uid
        assert files_holding(removal.root / "lake", needles["image"]) == [], uid


def test_a_rejected_image_request_moves_its_image_aside_and_submit_leaves_nothing(tmp_path):
    from infra.delta_store import Lineage
    from orchestration.optout_requests import apply_request_file
    from spark_jobs.optout import RequestError

    config = load_config(overrides={"lake": {"root": str(tmp_path / "lake")}})
    inbox = inbox_dir(config)
    inbox.write_bytes("bad.png", b"not an image")
    inbox.write_bytes("bad.json", json.dumps({"kind": "image", "image": "bad.png", "requester": "a",
                                              "reason": "b"}).encode())
    outcome = apply_request_file(config, inbox, "bad.json", Lineage(run_id="t"))
    assert outcome.status == "rejected" and "cannot be decoded" in outcome.rejection
    assert rejected_dir(config).names() == ["bad.json", "bad.json.reason.txt", "bad.png"]
    assert inbox.names() == [] and inbox.folders() == []
    with pytest.raises(RequestError, match="cannot be decoded"):
        submit_request(config, {"kind": "image", "requester": "a", "reason": "b"},
                       image=rejected_dir(config).local_path / "bad.png")
    assert inbox.names() == [] and inbox.folders() == []
