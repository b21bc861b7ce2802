"""The curated asset's checks as Spark queries: each one fails on a lake planted with what it
looks for, and passes without it."""

import datetime as dt
import hashlib

import pyarrow as pa

from infra.delta_store import Lake, Lineage
from infra.tables import BLOCKLIST, CLIP_SCORES, CURATED
from spark_jobs.curation_job import curated_on_hash_lists, curated_without_embedding, repeated_curated_uids

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)


def _curated(uid: str, variant: str = "research", url: str | None = None, md5: str | None = None) -> dict:
    return {"variant": variant, "uid": uid, "warc_file": "w", "url": url or f"http://h.example/{uid}.jpg",
            "caption": "c", "similarity": 0.3, "model_id": "m", "md5": md5 or f"{uid:0>32}", "cluster_size": 1}


def _listed(kind: str, digest: str, target: str) -> dict:
    return {"source": "list", "kind": kind, "target": target, "digest": digest, "line": 1, "list_date": NOW.date(),
            "imported_at": NOW}


def _lake(tmp_path, curated: list[dict], listed: list[dict], scored: list[str]) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    lake.overwrite(CURATED, pa.Table.from_pylist(curated, schema=CURATED.schema), Lineage())
    lake.overwrite(BLOCKLIST, pa.Table.from_pylist(listed, schema=BLOCKLIST.schema), Lineage())
    scores = [{"uid": u, "warc_file": "w", "model_id": "m", "embedding_dim": 2, "image_embedding": b"\0" * 4,
               "text_embedding": b"\0" * 4, "similarity": 0.3} for u in scored]
    lake.overwrite(CLIP_SCORES, pa.Table.from_pylist(scores, schema=CLIP_SCORES.schema), Lineage())
    return lake


def test_each_check_finds_what_was_planted(spark, tmp_path):
    url_listed = "http://h.example/b.jpg"
    curated = [
        _curated("a", md5="f" * 32),  # image digest on a list
        _curated("b", url=url_listed),  # URL digest on a list
        _curated("c", url="http://optout.example/x/c.jpg"),  # under an opt-out prefix rule
        _curated("d"), _curated("d"),  # twice in one variant
        _curated("d", variant="research-safe"),  # once more, in another variant: fine
        _curated("e"),  # no embedding
    ]
    listed = [_listed("image-md5", "f" * 32, "image"),
              _listed("url-sha256", hashlib.sha256(url_listed.encode()).hexdigest(), "url"),
              _listed("url-prefix", "http://optout.example/x/", "url")]
    lake = _lake(tmp_path, curated, listed, scored=["a", "b", "c", "d"])
    assert curated_on_hash_lists(spark, lake) == (3, ["a", "b", "c"])
    assert repeated_curated_uids(spark, lake) == 1
    assert curated_without_embedding(spark, lake) == 1


def test_a_clean_curated_set_passes_every_check(spark, tmp_path):
    lake = _lake(tmp_path, [_curated("a"), _curated("b", variant="research-safe")],
                 [_listed("image-md5", "f" * 32, "image")], scored=["a", "b"])
    assert curated_on_hash_lists(spark, lake) == (0, [])
    assert repeated_curated_uids(spark, lake) == 0
    assert curated_without_embedding(spark, lake) == 0
