"""The funnel from tables scanned a batch at a time: the counts and histograms of a planted lake."""

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from infra.delta_store import Lake, Lineage
from infra.tables import BLOCKLIST_MATCHES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, KEPT_PAIRS, SHARDS, STAGE_STATS
from orchestration import report

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)


def _table(spec, rows):
    return pa.Table.from_pylist(rows, schema=spec.schema)


def test_funnel_counts_and_histograms(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_BATCH_ROWS", 7)  # many batches per table
    lake, n = Lake(str(tmp_path / "lake")), 60
    uids = [f"u{i:03d}" for i in range(n)]
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.2, 0.6, n).astype(np.float32)
    stats = [{"stage": "candidates", "partition": p, "metric": m, "value": v}
             for p in ("a", "b") for m, v in (("html_pages", 5), ("candidates", 40))]
    stats += [{"stage": "images", "partition": "a", "metric": "images_ok", "value": n},
              {"stage": "images", "partition": "a", "metric": "failed_http_404", "value": 3},
              {"stage": "kept_pairs", "partition": "a", "metric": "kept", "value": 30}]
    lake.overwrite(STAGE_STATS, _table(STAGE_STATS, stats), Lineage())
    kept = uids[:30]
    lake.overwrite(KEPT_PAIRS, _table(KEPT_PAIRS, [{"uid": u, "warc_file": "a", "url": "u", "caption": "c",
                                                    "similarity": 0.5, "model_id": "m"} for u in kept]), Lineage())
    lake.overwrite(BLOCKLIST_MATCHES, _table(BLOCKLIST_MATCHES, [
        {"uid": kept[0], "warc_file": "a", "source": "l1", "kind": "image-md5"},
        {"uid": kept[0], "warc_file": "a", "source": "l2", "kind": "url-sha256"},
        {"uid": "not-kept", "warc_file": "a", "source": "l1", "kind": "image-md5"}]), Lineage())
    reasons = ["kept"] * 25 + ["exact_duplicate"] * 3 + ["near_duplicate"] * 1
    lake.overwrite(DEDUP, _table(DEDUP, [{"uid": u, "warc_file": "a", "sha256": u, "exact_representative": u,
                                          "cluster": u, "cluster_size": 1, "reason": r}
                                         for u, r in zip(kept[1:], reasons)]), Lineage())
    lake.overwrite(CURATED, _table(CURATED, [{"variant": v, "uid": u, "warc_file": "a", "url": "u", "caption": "c",
                                              "similarity": 0.5, "model_id": "m", "cluster_size": 1}
                                             for v, k in (("research", 25), ("research-safe", 20)) for u in kept[:k]]),
                  Lineage())
    lake.overwrite(CLIP_SCORES, _table(CLIP_SCORES, [{"uid": u, "warc_file": "a", "model_id": "m", "embedding_dim": 1,
                                                      "image_embedding": b"", "text_embedding": b"", "similarity": s}
                                                     for u, s in zip(uids, sims)]), Lineage())
    lake.overwrite(IMAGE_TAGS, _table(IMAGE_TAGS, [{"uid": u, "warc_file": "a", "model_id": "m", "punsafe": i / n,
                                                    "pwatermark": None, "aesthetic": 5.0, "scorers": "{}"}
                                                   for i, u in enumerate(uids)]), Lineage())
    lake.overwrite(SHARDS, _table(SHARDS, [{"export_id": e, "shard": s, "path": "p", "samples": k, "bytes": 1,
                                            "sha256": "x", "source_version": v, "created_at": NOW}
                                           for e, v, s, k in (("r/v1", 1, "00000", 20), ("r/v2", 2, "00000", 12),
                                                              ("r/v2", 2, "00001", 7))]), Lineage())

    funnel = report.build_funnel(lake, threshold=0.28)
    assert funnel.steps == [("html pages", 10), ("candidate pairs", 80), ("downloaded", 60), ("kept (CLIP)", 30),
                            ("not on hash lists", 29), ("after dedup", 25), ("curated research", 25),
                            ("curated research-safe", 20), ("in shards", 19)]
    assert funnel.failure_reasons == {"http_404": 3} and funnel.shards == 2
    assert funnel.curation == {"dedup": {"exact_duplicate": 3, "kept": 25, "near_duplicate": 1},
                               "blocklist matches": {"l1/image-md5": 2, "l2/url-sha256": 1}}
    assert sum(funnel.similarity_kept.counts) == int((sims > 0.28).sum())
    assert sum(funnel.similarity_dropped.counts) == int((sims <= 0.28).sum())
    assert sum(funnel.tags["punsafe"].counts) == n and funnel.tags["pwatermark"].counts == []
    assert sum(funnel.tags["aesthetic"].counts) == n  # one value: a range of width 1 around it
    page = Path(report.write_report(funnel, Lake(str(tmp_path / "lake")))).read_text()
    assert page.count("<img src='data:image/png;base64,") == 4  # funnel, similarity, tags, failures
