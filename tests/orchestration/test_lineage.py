"""`pairlake lineage UID`: a small real lake (Delta tables + release dirs), no Spark, no model."""

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.config import InputError
from infra.delta_store import Lake, Lineage
from infra.tables import (
    CANDIDATES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, IMAGES, KEPT_PAIRS, OPTOUT_REQUESTS, REMOVALS,
)
from orchestration.cli import main
from orchestration.lineage import describe, format_lineage
from spark_jobs import shard_export
from spark_jobs.release import MEMBERS, version_dir, write_members

WARC = "CC-MAIN-0001.warc.gz"
KEPT = "a1" * 16  # kept, curated, in releases v1 and v2
GONE = "b2" * 16  # opted out: only the removal audit trail and v1's published members know it
FAILED = "c3" * 16  # its download failed
AT = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
MODEL = "pairlake-demo-tiny/abc123"


def table(spec, rows):
    return pa.Table.from_pylist(rows, schema=spec.schema)


def candidate(uid, n):
    return {"uid": uid, "url": f"http://img.example/{n}.jpg", "caption": f"a red circle {n}",
            "page_url": f"http://page.example/{n}.html", "crawl_id": "demo-crawl", "warc_file": WARC,
            "record_offset": 1000 * n, "fetch_date": AT}


def image(uid, n, ok=True):
    return {"uid": uid, "url": f"http://img.example/{n}.jpg", "warc_file": WARC, "status": "ok" if ok else "failed",
            "error": None if ok else "http_404", "retryable": False, "http_status": 200 if ok else 404,
            "attempts": 1, "final_url": f"http://cdn.example/{n}.jpg", "fetched_at": AT,
            "image": b"jpeg" if ok else None, "width": 64 if ok else None, "height": 64 if ok else None,
            "original_width": 640 if ok else None, "original_height": 480 if ok else None,
            "original_bytes": 12345 if ok else None, "sha256": f"{n:064x}" if ok else None}


def kept_pair(uid, n):
    return {"uid": uid, "warc_file": WARC, "url": f"http://img.example/{n}.jpg", "caption": f"a red circle {n}",
            "language": "en", "similarity": 0.31, "model_id": MODEL, "sha256": f"{n:064x}"}


def write_release(lake, release, version, uids):
    """A release version as make_release leaves it: shards + members.parquet."""
    out = version_dir(lake, release, version)
    samples = pa.table({"uid": uids, "caption": [f"caption {u[:4]}" for u in uids],
                        "url": [f"http://img.example/{u[:4]}.jpg" for u in uids], "image": [b"jpeg"] * len(uids)})
    shard_export.export_shards(samples, out, samples_per_shard=1)
    write_members(out)
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    run = Lineage(run_id="run-1", asset_key="test")
    lake.replace_partitions(CANDIDATES, table(CANDIDATES, [candidate(KEPT, 1), candidate(FAILED, 3)]), [WARC],
                            Lineage(run_id="run-candidates"))
    lake.replace_partitions(IMAGES, table(IMAGES, [image(KEPT, 1), image(FAILED, 3, ok=False)]), [WARC], run)
    lake.replace_partitions(CLIP_SCORES, table(CLIP_SCORES, [
        {"uid": KEPT, "warc_file": WARC, "model_id": MODEL, "embedding_dim": 2, "image_embedding": b"\0" * 4,
         "text_embedding": b"\0" * 4, "similarity": 0.31}]), [WARC], run)
    lake.replace_partitions(IMAGE_TAGS, table(IMAGE_TAGS, [
        {"uid": KEPT, "warc_file": WARC, "model_id": MODEL, "punsafe": 0.02, "pwatermark": 0.1, "aesthetic": 5.5,
         "extra": [("nsfw_text", 0.01)], "scorers": "{}"}]), [WARC], run)
    lake.replace_partitions(KEPT_PAIRS, table(KEPT_PAIRS, [kept_pair(KEPT, 1)]), [WARC], run)
    lake.overwrite(DEDUP, table(DEDUP, [
        {"uid": KEPT, "warc_file": WARC, "sha256": f"{1:064x}", "exact_representative": KEPT, "cluster": KEPT,
         "cluster_size": 1, "reason": "unique"}]), run)
    curated = [{"variant": v, **kept_pair(KEPT, 1), "punsafe": 0.02, "cluster_size": 1}
               for v in ("research", "research-safe")]
    lake.replace_partitions(CURATED, table(CURATED, curated), ["research", "research-safe"], run)
    lake.append(OPTOUT_REQUESTS, table(OPTOUT_REQUESTS, [
        {"request_id": "req-7", "status": "applied", "kind": "url", "target_sha256": "f" * 64,
         "requester": "jane@mail.test", "reason": "my photo", "matched": 1, "file_name": "req-7.json",
         "received_at": AT, "applied_at": AT, "run_id": "run-optout"}]), Lineage(run_id="run-optout"))
    lake.append(REMOVALS, table(REMOVALS, [
        {"uid": GONE, "request_id": "req-7", "matched_by": "url", "removed_at": AT, "run_id": "run-optout"}]),
        Lineage(run_id="run-optout"))
    # v1 held both; v2, the re-release after the opt-out, holds KEPT only and v1's shards were retired.
    v1 = write_release(lake, "demo", 1, [KEPT, GONE])
    write_release(lake, "demo", 2, [KEPT])
    for path in v1.local_path.iterdir():
        if path.name != MEMBERS:
            path.unlink()
    return lake


def members(lake, version, uid):
    rows = pq.read_table(version_dir(lake, "demo", version).local_path / MEMBERS).to_pylist()
    return next((r["shard"], r["key"]) for r in rows if r["uid"] == uid)


def test_kept_curated_released_uid(lake):
    info = describe(lake, KEPT)
    assert info["source"]["warc_file"] == WARC
    assert info["source"]["record_offset"] == 1000
    assert info["source"]["page_url"] == "http://page.example/1.html"
    assert info["download"]["status"] == "ok" and info["download"]["original_width"] == 640
    assert [c["model_id"] for c in info["clip"]] == [MODEL]
    assert "image_embedding" not in info["clip"][0]
    assert info["tags"][0]["extra"] == {"nsfw_text": pytest.approx(0.01)}
    assert info["kept"] is True and info["language"] == "en"
    assert info["dedup"]["reason"] == "unique"
    assert info["curated"] == ["research", "research-safe"]
    assert info["removed"] is None
    v1_shard, v1_key = members(lake, 1, KEPT)
    shard, key = members(lake, 2, KEPT)
    assert info["releases"] == [
        {"release": "demo", "version": 1, "shard": v1_shard, "key": v1_key, "present": False},  # retired
        {"release": "demo", "version": 2, "shard": shard, "key": key, "present": True},
    ]
    assert info["table_versions"]["candidates"] == {"version": 0, "run_id": "run-candidates"}
    assert "removals" in info["table_versions"]
    text = format_lineage(info)
    for expected in (WARC, "http://page.example/1.html", MODEL, "kept\n  yes  (caption language en)",
                     "research, research-safe", "demo v2", "on disk"):
        assert expected in text


def test_failed_download_uid_is_not_kept(lake):
    info = describe(lake, FAILED)
    assert info["download"]["error"] == "http_404"
    assert info["kept"] is False and info["curated"] == [] and info["releases"] == []
    text = format_lineage(info)
    assert "http_404" in text and "kept\n  no" in text and "releases" not in text


def test_removed_uid_shows_the_request_and_no_url(lake):
    info = describe(lake, GONE)
    assert info["removed"]["request_id"] == "req-7"
    assert info["removed"]["request"]["requester"] == "jane@mail.test"
    assert info["removed"]["request"]["reason"] == "my photo"
    assert info["removed"]["request"]["status"] == "applied"
    assert info["source"] is None and info["kept"] is False
    shard, key = members(lake, 1, GONE)
    assert info["releases"] == [{"release": "demo", "version": 1, "shard": shard, "key": key, "present": False}]
    for text in (format_lineage(info), json.dumps(info, default=str)):
        assert "req-7" in text and "jane@mail.test" in text and "my photo" in text
        assert "://" not in text and "example" not in text


def test_removal_not_yet_applied_everywhere_still_shows_no_url(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.replace_partitions(CANDIDATES, table(CANDIDATES, [candidate(GONE, 2)]), [WARC], Lineage())
    lake.replace_partitions(IMAGES, table(IMAGES, [image(GONE, 2)]), [WARC], Lineage())
    lake.append(REMOVALS, table(REMOVALS, [
        {"uid": GONE, "request_id": "req-8", "matched_by": "domain", "removed_at": AT, "run_id": "r"}]), Lineage())
    info = describe(lake, GONE)
    assert info["source"]["warc_file"] == WARC and info["removed"]["request"] is None
    for text in (format_lineage(info), json.dumps(info, default=str)):
        assert "://" not in text and "example" not in text


def test_unknown_uid_is_an_input_error(lake):
    with pytest.raises(InputError, match="unknown"):
        describe(lake, "d4" * 16)


@pytest.fixture
def config(lake, tmp_path, monkeypatch):
    # `pairlake --config` exports the file for the Dagster resource; undo that after each test.
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    path = tmp_path / "pairlake.toml"
    path.write_text(f'[lake]\nroot = "{lake.root}"\n')
    return str(path)


def test_cli_prints_the_lineage(config, capsys):
    assert main(["--config", config, "lineage", KEPT]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"uid {KEPT}") and WARC in out and "demo v2" in out


def test_cli_json(config, capsys):
    assert main(["--config", config, "lineage", GONE, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["uid"] == GONE and info["removed"]["request_id"] == "req-7"


def test_cli_unknown_uid_is_one_line(config, capsys):
    assert main(["--config", config, "lineage", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nope' is unknown" in err and len(err.splitlines()) == 1
