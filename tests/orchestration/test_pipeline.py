"""Ingestion through Dagster, against the sample crawl's ground truth (expected.json): extraction,
downloads, the CLIP filter, shards, lineage, idempotent re-runs, the funnel. The pipeline run
itself is in pipeline_run.py (a session fixture shared with test_curation)."""

from __future__ import annotations

import json
import tarfile

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from infra.tables import CANDIDATES, CURATED, IMAGES, RELEASES, SHARDS, STAGE_STATS, WARC_FILES
from orchestration.report import build_funnel
from spark_jobs.shard_export import export_shards
from tests.orchestration.pipeline_run import THRESHOLD, snapshot

pytestmark = pytest.mark.slow

FAILURE_BY_KIND = {
    "http_404": "http_404",
    "timeout": "timeout",
    "noai": "opted_out:x-robots-tag",
    "robots_disallowed": "robots_disallowed",
    "meta_robots": "opted_out:meta-robots",
    "tdm_meta": "opted_out:tdm-meta",
    "tdm_header": "opted_out:tdm-header",
    "tdmrep_json": "opted_out:tdmrep-json",
    "ai_txt": "opted_out:ai-txt",
    "robots_ai": "opted_out:robots-txt",
    "not_image": "not_image",
    "truncated": "decode_error",
    "huge": "decompression_bomb",
    "blocklisted_url": "blocklisted",
}


def _by_url(table: pa.Table) -> dict[str, dict]:
    return {row["url"]: row for row in table.to_pylist()}


def test_runs_succeed_and_materializations_carry_metadata(pipeline):
    assert len(pipeline.runs) == 3 and len(pipeline.rerun) == 3
    for run_id in pipeline.runs + pipeline.rerun:
        assert pipeline.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    warcs = pipeline.truth["warcs"]
    assert sorted(pipeline.instance.get_dynamic_partitions("warc_files")) == sorted(warcs)
    for asset in ("candidates", "images", "clip_scores", "image_tags", "kept_pairs"):
        assert pipeline.instance.get_materialized_partitions(dg.AssetKey(asset)) == set(warcs), asset
        event = pipeline.instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event.asset_materialization.metadata["delta_version"].value >= 0
    release = pipeline.instance.get_latest_materialization_event(dg.AssetKey("release"))
    assert release.asset_materialization.metadata["samples"].value > 0


def test_candidates_match_the_crawl_ground_truth(pipeline):
    candidates = pipeline.first["candidates"]
    assert len(set(candidates.column("uid").to_pylist())) == candidates.num_rows
    by_url = _by_url(candidates)
    extracted = {url: e for url, e in pipeline.truth["images"].items() if e["extracted"]}
    assert set(by_url) == set(extracted)
    for url, entry in extracted.items():
        row = by_url[url]
        assert row["caption"] == entry["caption"], url
        assert row["page_url"] in entry["pages"]
        assert row["crawl_id"] == "demo-crawl" and row["record_offset"] >= 0
    # A duplicate pair on several pages and WARC files is stored once.
    duplicates = [u for u, e in extracted.items() if e["kind"] == "duplicate"]
    assert duplicates and all(candidates.filter(pc.equal(candidates["url"], u)).num_rows == 1 for u in duplicates)
    # The malformed record is recorded with its reason, and its file's other pairs are kept.
    rejects = pipeline.first["warc_rejects"].to_pylist()
    malformed = pipeline.truth["malformed_record"]
    assert any(r["warc_file"] == malformed["warc"] for r in rejects)
    assert candidates.filter(pc.equal(candidates["warc_file"], malformed["warc"])).num_rows > 0


def test_every_candidate_gets_exactly_one_image_row_with_its_outcome(pipeline):
    images = pipeline.first["images"]
    assert sorted(images.column("uid").to_pylist()) == sorted(pipeline.first["candidates"].column("uid").to_pylist())
    by_url = _by_url(images)
    for url, entry in pipeline.truth["images"].items():
        if not entry["extracted"]:
            continue
        row = by_url[url]
        if entry["download"] == "ok":
            assert row["status"] == "ok", (url, row["error"], row["error_detail"])
            assert row["width"] == 256 and row["height"] == 256 and len(row["sha256"]) == 64
        else:
            assert row["status"] == "failed", url
            if entry["kind"] in FAILURE_BY_KIND:
                assert row["error"] == FAILURE_BY_KIND[entry["kind"]], (url, row["error"], row["error_detail"])


def test_robots_disallowed_image_is_never_requested(pipeline):
    private = [u for u, e in pipeline.truth["images"].items() if e["kind"] == "robots_disallowed"]
    paths = {path for _, path in pipeline.server.access_log}
    assert "/robots.txt" in paths
    assert private and not any(u.split("127.0.0.1", 1)[1].split("/", 1)[1] in p for u in private for p in paths)


def test_every_opt_out_signal_refuses_its_image_and_only_the_header_costs_a_request(pipeline):
    truth = pipeline.truth["images"]
    paths = [path for _, path in pipeline.log_after_first]
    for kind in ("meta_robots", "tdm_meta", "tdmrep_json", "ai_txt", "robots_ai", "tdm_header"):
        urls = [u for u, e in truth.items() if e["kind"] == kind]
        assert urls, kind
        requested = ["/" + u.split("/", 3)[3] in paths for u in urls]
        # Only a response header cannot be known before the request.
        assert requested == [kind == "tdm_header"] * len(urls), kind
    for origin_file in ("/robots.txt", "/.well-known/tdmrep.json", "/ai.txt"):
        assert origin_file in paths
    images = pipeline.first["images"]
    errors = [e for e in images.column("error").to_pylist() if e and e.startswith("opted_out:")]
    assert {e.split(":", 1)[1] for e in errors} >= {"meta-robots", "tdm-meta", "tdm-header", "tdmrep-json", "ai-txt",
                                                  "robots-txt", "x-robots-tag"}


def test_clip_filter_keeps_matching_captions_and_drops_mismatching_ones(pipeline):
    kept = set(pipeline.first["kept_pairs"].column("url").to_pylist())
    downloaded = {u: e for u, e in pipeline.truth["images"].items() if e["download"] == "ok"}
    matches = [u for u, e in downloaded.items() if e["clip"] == "match"]
    mismatches = [u for u, e in downloaded.items() if e["clip"] == "mismatch"]
    assert len(matches) > 50 and len(mismatches) > 30
    # The demo model separates crawl captions well but not perfectly (see the demo model's report).
    assert sum(u in kept for u in matches) / len(matches) >= 0.7
    assert sum(u in kept for u in mismatches) / len(mismatches) <= 0.2
    sims = pipeline.first["kept_pairs"].column("similarity").to_pylist()
    assert min(sims) > THRESHOLD


def test_kept_pairs_carry_their_captions_language(pipeline):
    kept = pipeline.first["kept_pairs"]
    language = dict(zip(kept["url"].to_pylist(), kept["language"].to_pylist()))
    assert None not in language.values()
    truth = pipeline.truth["images"]
    english = [language[url] for url in language if truth[url]["clip"] == "match"]
    assert len(english) > 30 and english.count("en") / len(english) >= 0.9
    for url, entry in truth.items():
        if entry["kind"] == "non_english" and url in language:
            assert language[url] == entry["language"], (url, entry["caption"])


def test_shards_hold_the_curated_variant_of_a_pinned_version(pipeline):
    manifest = pipeline.first["shards"]
    curated = pipeline.first["curated"]
    safe = curated.filter(pc.equal(curated["variant"], "research-safe"))
    assert manifest.num_rows >= 2 and sum(manifest.column("samples").to_pylist()) == safe.num_rows
    source_versions = set(manifest.column("source_version").to_pylist())
    assert len(source_versions) == 1
    pinned = pipeline.lake.read(CURATED, version=source_versions.pop(), filter=pc.field("variant") == "research-safe")
    assert sorted(pinned.column("uid").to_pylist()) == sorted(safe.column("uid").to_pylist())
    # The re-run made the next version (the late hash list removed a sample); v1 kept its record
    # but not its shard files, so the files are read from what table shards lists now.
    current = pipeline.lake.read(SHARDS)
    assert len(set(current["export_id"].to_pylist())) == 1
    first_tar = pipeline.lake.path(current.sort_by("shard").column("path")[0].as_py())
    with tarfile.open(first_tar) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert any(n.endswith(".jpg") for n in names) and any(n.endswith(".txt") for n in names)
    assert {"punsafe", "pwatermark", "aesthetic", "similarity", "sha1"} <= set(meta)
    assert first_tar.with_suffix(".parquet").exists() and first_tar.with_name(first_tar.stem + "_stats.json").exists()


def test_release_shards_are_the_single_process_export_byte_for_byte(pipeline, tmp_path):
    """The release's Spark tasks write what one process writes from the same pinned tables."""
    v1 = next(row for row in pipeline.lake.read(RELEASES).to_pylist() if row["version"] == 1)
    manifest = json.loads((pipeline.lake.path(v1["path"]) / "manifest.json").read_text())
    pinned = manifest["source_versions"]
    curated = pipeline.lake.read(CURATED, version=pinned["curated"], filter=pc.field("variant") == manifest["variant"])
    images = pipeline.lake.read(IMAGES, version=pinned["images"], columns=["uid", "image"],
                                filter=pc.field("status") == "ok")
    shards = export_shards(curated.drop_columns(["variant"]).join(images, "uid"), tmp_path, 20)  # as configured
    assert [(s.shard, s.sha256) for s in shards] == [(s["shard"], s["sha256"]) for s in manifest["shards"]]


def test_every_commit_records_lineage(pipeline):
    ingest_run = pipeline.runs[1]
    lineage = pipeline.lake.lineage(CANDIDATES, pipeline.lake.table(CANDIDATES, 0).version())
    assert lineage.run_id == ingest_run
    assert lineage.asset_key == "candidates"
    assert sorted(lineage.partition_keys) == sorted(pipeline.truth["warcs"])
    assert lineage.upstream["warc_files"] == 0 and lineage.code_version
    images = pipeline.lake.lineage(IMAGES, 0)
    assert images.run_id == ingest_run and "candidates" in images.upstream


def test_rerun_gives_the_same_tables_and_refetches_only_retryable_failures(pipeline):
    second = snapshot(pipeline.lake)
    for name in ("candidates", "kept_pairs", "warc_rejects"):
        before, after = pipeline.first[name], second[name]
        assert before.num_rows == after.num_rows, name
        if "uid" in before.column_names:
            assert sorted(before.column("uid").to_pylist()) == sorted(after.column("uid").to_pylist()), name
    assert second["images"].num_rows == pipeline.first["images"].num_rows
    assert pipeline.lake.read(WARC_FILES).num_rows == len(pipeline.truth["warcs"])
    # Successes were kept, not fetched again; only retryable failures (the timeout) were retried.
    again = pipeline.rerun_log
    ok_paths = {"/" + u.split("/", 3)[3] for u, e in pipeline.truth["images"].items() if e["download"] == "ok"}
    assert not [p for _, p in again if p in ok_paths]
    timeouts = {"/" + u.split("/", 3)[3] for u, e in pipeline.truth["images"].items() if e["kind"] == "timeout"}
    assert timeouts <= {p for _, p in again}


def test_funnel_counts_every_stage(pipeline):
    funnel = build_funnel(pipeline.lake, THRESHOLD)
    counts = [count for _, count in funnel.steps]
    assert counts[1:] == sorted(counts[1:], reverse=True) and counts[-1] > 0
    assert dict(funnel.steps)["candidate pairs"] == pipeline.first["candidates"].num_rows
    stats = pipeline.lake.read(STAGE_STATS)
    assert set(stats.column("stage").to_pylist()) == {"candidates", "images", "clip_scores", "kept_pairs"}
