"""Curation on the demo crawl (issue B): hash lists, dedup, tags, curated variants, the kNN index
and search, against the planted ground truth in expected.json."""

from __future__ import annotations

import statistics

import dagster as dg
import pyarrow.compute as pc
import pytest

from gpu_jobs.knn_index import index_folder
from gpu_jobs.retrieval import LakeIndexes, QueryEncoder, SearchOptions
from infra.config import load_config
from infra.tables import CURATED
from orchestration.cli import main as cli_main

pytestmark = pytest.mark.slow


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def _kinds(pipeline, *kinds: str) -> dict[str, dict]:
    return {u: e for u, e in pipeline.truth["images"].items() if e["kind"] in kinds}


def _uid_by_url(pipeline) -> dict[str, str]:
    candidates = pipeline.first["candidates"]
    return dict(zip(candidates["url"].to_pylist(), candidates["uid"].to_pylist()))


def _variant(pipeline, name: str) -> set[str]:
    curated = pipeline.first["curated"]
    return set(curated.filter(pc.equal(curated["variant"], name))["uid"].to_pylist())


def test_url_hash_list_stops_downloads_and_no_request_is_made(pipeline):
    listed = _kinds(pipeline, "blocklisted_url")
    assert len(listed) == 2
    images = {r["url"]: r for r in pipeline.first["images"].to_pylist()}
    for url in listed:
        assert images[url]["error"] == "blocklisted" and images[url]["attempts"] == 0
        assert "demo-url-sha256" in images[url]["error_detail"]
    requested = {path for _, path in pipeline.server.access_log}
    assert not {_path(u) for u in listed} & requested


def test_image_hash_list_matches_stored_digests_without_fetching_again(pipeline):
    listed = _kinds(pipeline, "blocklisted_image")
    uids = _uid_by_url(pipeline)
    matches = pipeline.first["blocklist_matches"].to_pylist()
    by_uid = {(m["uid"], m["source"], m["kind"]) for m in matches}
    assert {(uids[u], "demo-image-md5", "image-md5") for u in listed} <= by_uid
    assert {(uids[u], "demo-url-sha256", "url-sha256") for u in _kinds(pipeline, "blocklisted_url")} <= by_uid
    # The image list's planted match was downloaded once, in the first pass, and never again.
    for url in listed:
        assert [p for _, p in pipeline.server.access_log].count(_path(url)) == 1
    blocked = {m["uid"] for m in matches}
    for table in ("dedup", "curated"):
        assert not blocked & set(pipeline.first[table]["uid"].to_pylist()), table
    first_release = pipeline.instance.all_logs(pipeline.runs[-1], of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    (metadata,) = [e.asset_materialization.metadata for e in first_release
                   if e.asset_materialization.asset_key == dg.AssetKey("blocklist_matches")]
    assert metadata["matches_per_list"].value == {"demo-image-md5/image-md5": 2, "demo-url-sha256/url-sha256": 2}


def test_exact_and_near_duplicates_keep_one_representative(pipeline):
    uids = _uid_by_url(pipeline)
    dedup = {r["uid"]: r for r in pipeline.first["dedup"].to_pylist()}
    kept = {r["uid"]: r for r in pipeline.first["kept_pairs"].to_pylist()}
    checked = {"exact_duplicate": 0, "near_duplicate": 0}
    groups: dict[str, list[str]] = {}
    for url, entry in _kinds(pipeline, "exact_duplicate", "near_duplicate").items():
        groups.setdefault(entry["group"], []).append(uids[url])
    for group, members in groups.items():
        if not all(m in kept for m in members):
            continue  # the CLIP filter dropped one: nothing left to dedup
        kind = group.rsplit("-", 1)[0]
        best = max(members, key=lambda m: (kept[m]["similarity"], -members.index(m)))
        reasons = sorted(dedup[m]["reason"] for m in members)
        assert reasons == sorted(["kept", kind]), (group, reasons)
        representative = next(m for m in members if dedup[m]["reason"] == "kept")
        if kind == "exact_duplicate":
            assert representative == best and {dedup[m]["exact_representative"] for m in members} == {best}
        assert {dedup[m]["cluster"] for m in members} == {representative}
        checked[kind] += 1
    assert checked["exact_duplicate"] >= 1 and checked["near_duplicate"] >= 1, checked
    # Plain matches are all distinct renders: none may be merged.
    plain = [uids[u] for u in _kinds(pipeline, "match") if uids.get(u) in dedup]
    assert sum(dedup[u]["reason"] != "kept" for u in plain) <= 1


def _tag(pipeline, tag: str, kinds: tuple[str, ...]) -> list[float]:
    uids = _uid_by_url(pipeline)
    tags = {r["uid"]: r for r in pipeline.first["image_tags"].to_pylist()}
    return [tags[uids[u]][tag] for u in _kinds(pipeline, *kinds) if uids.get(u) in tags]


def test_tags_find_the_planted_overlays(pipeline):
    plain = ("match",)
    for tag, overlay, high in (("punsafe", "hazard", True), ("pwatermark", "watermark", True), ("aesthetic", "degraded", False)):
        planted, normal = _tag(pipeline, tag, (overlay,)), _tag(pipeline, tag, plain)
        assert len(planted) == 3 and len(normal) > 50
        # The demo heads are good, not perfect (their report: held-out accuracy 0.88-0.99).
        found = [p > 0.5 if high else p < 0.5 for p in planted]
        typical = statistics.median(normal)
        assert sum(found) >= 2 and (typical < 0.2 if high else typical > 0.8), (tag, planted, typical)
    rows = pipeline.first["image_tags"].to_pylist()
    assert all(dict(r["extra"]).keys() == {"pround", "pviolence"} for r in rows)
    assert all('"punsafe": "head:punsafe.pt@sha256:' in r["scorers"] for r in rows)


def test_curated_variants_apply_the_safety_limits(pipeline):
    research, safe = _variant(pipeline, "research"), _variant(pipeline, "research-safe")
    assert safe <= research and len(safe) > 50
    for row in pipeline.first["curated"].to_pylist():
        if row["variant"] == "research":
            assert row["punsafe"] <= 0.95 and (row["uid"] in safe) == (row["punsafe"] <= 0.45), row
    uids = _uid_by_url(pipeline)
    hazard = {uids[u] for u in _kinds(pipeline, "hazard")}
    assert len(hazard & safe) <= 1  # the demo's unsafe stand-in: its head finds most of them
    assert research <= set(pipeline.first["kept_pairs"]["uid"].to_pylist())
    lineage = pipeline.lake.lineage(CURATED)
    assert {"kept_pairs", "dedup", "image_tags", "blocklist_matches"} <= set(lineage.upstream)


def test_asset_checks_pass(pipeline):
    release = pipeline.runs[-1]
    events = pipeline.instance.all_logs(release, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    results = {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed for e in events}
    assert results == {"no_blocklisted_hash": True, "unique_uid_per_variant": True, "every_row_has_an_embedding": True}


def test_rerun_leaves_curation_unchanged_but_for_a_late_hash_list(pipeline):
    from tests.orchestration.pipeline_run import LATE_LIST, snapshot

    second = snapshot(pipeline.lake)
    late = pipeline.late_uid
    for name in ("blocklist_matches", "dedup", "curated", "image_tags"):
        key = ["variant", "uid"] if name == "curated" else ["uid"]
        before = sorted(tuple(r[k] for k in key) for r in pipeline.first[name].to_pylist())
        after = sorted(tuple(r[k] for k in key) for r in second[name].to_pylist())
        if name == "blocklist_matches":
            assert sorted(set(after) - set(before)) == [(late,)]
        elif name in ("dedup", "curated"):
            assert [k for k in before if k[-1] != late] == after and len(after) < len(before), name
        else:
            assert before == after, name
    # Removed from the stored MD5 alone: the image's URL was not requested again.
    url = pipeline.first["images"].filter(pc.equal(pipeline.first["images"]["uid"], late))["url"][0].as_py()
    assert _path(url) not in {p for _, p in pipeline.rerun_log}
    matches = pipeline.instance.get_latest_materialization_event(dg.AssetKey("blocklist_matches"))
    assert matches.asset_materialization.metadata["matches_per_list"].value[f"{LATE_LIST}/image-md5"] == 1


def _commonest_class(pipeline) -> tuple[str, str, int]:
    """(colour, shape, images) of the class with most plain matches in the research variant."""
    research = _variant(pipeline, "research")
    uids = _uid_by_url(pipeline)
    counts: dict[tuple[str, str], int] = {}
    for url, entry in _kinds(pipeline, "match").items():
        if uids.get(url) in research:
            counts[tuple(entry["class"])] = counts.get(tuple(entry["class"]), 0) + 1
    (colour, shape), count = max(sorted(counts.items()), key=lambda kv: kv[1])
    return colour, shape, min(count, 5)


def test_index_manifest_and_search(pipeline):
    config = load_config(pipeline.config_path)
    index = LakeIndexes(pipeline.lake, config.clip).get("research")
    encoder = QueryEncoder(config.clip, config.download)
    manifest = index.manifest
    research_now = pipeline.lake.read(CURATED, filter=pc.field("variant") == "research")
    assert manifest["recall_at_10"] >= 0.95 and manifest["vectors"] == research_now.num_rows
    assert manifest["source_version"] == pipeline.lake.version(CURATED)
    assert index.metadata.num_rows == manifest["vectors"]
    assert index_folder(pipeline.lake, "research").names("*.parquet") == [manifest["metadata_file"]]
    # Text -> image: the class with most curated images, asked for by name, comes first.
    colour, shape, count = _commonest_class(pipeline)
    hits = [h.metadata for h in index.search(encoder.text(f"a {colour} {shape}"), SearchOptions(count, count))]
    assert f"{colour} {shape}" in hits[0]["caption"], hits
    assert sum(f"{colour} {shape}" in h["caption"] for h in hits) >= count - 1, hits
    # Image -> image: a near duplicate that dedup dropped finds its representative first.
    uids = _uid_by_url(pipeline)
    dedup = {r["uid"]: r for r in pipeline.first["dedup"].to_pylist()}
    dropped = [u for u in _kinds(pipeline, "near_duplicate") if dedup.get(uids[u], {}).get("reason") == "near_duplicate"]
    assert dropped
    image = pipeline.first["images"].filter(pc.equal(pipeline.first["images"]["url"], dropped[0]))["image"][0].as_py()
    top = index.search(encoder.image(image), SearchOptions(3, 3))[0]
    assert top.metadata["uid"] == dedup[uids[dropped[0]]]["cluster"] and top.similarity > 0.94


def test_cli_search_and_train_head(pipeline, capsys, monkeypatch):
    monkeypatch.setenv("PAIRLAKE_CONFIG", str(pipeline.config_path))
    colour, shape, _ = _commonest_class(pipeline)
    assert cli_main(["search", f"a {colour} {shape}", "-k", "3"]) == 0
    first_hit = capsys.readouterr().out.splitlines()[1]
    assert f"{colour} {shape}" in first_hit, first_hit
    # A head for "is a circle" from labelled uids of the crawl, trained on the stored embeddings.
    uids = _uid_by_url(pipeline)
    scored = set(pipeline.first["image_tags"]["uid"].to_pylist())
    rows = [(uids[u], int(e["class"][1] == "circle")) for u, e in _kinds(pipeline, "match", "mismatch").items()
            if uids.get(u) in scored]
    labels = pipeline.config_path.parent / "circle-labels.csv"
    labels.write_text("uid,label\n" + "".join(f"{u},{y}\n" for u, y in rows))
    assert cli_main(["train-head", "pcircle", "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("held-out accuracy ")[1].split()[0])
    assert accuracy >= 0.8, out
    assert (pipeline.lake_root / "heads" / "pcircle.pt").exists() and (pipeline.lake_root / "heads" / "pcircle.json").exists()
    bad = pipeline.config_path.parent / "bad-labels.csv"
    bad.write_text("uid,label\nabc,2\n")
    assert cli_main(["train-head", "bad", "--labels", str(bad)]) == 2
    assert "line" in capsys.readouterr().err
