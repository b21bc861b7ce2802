"""Search over a saved index: clip-retrieval's filters, metadata by id, removals and reloads, on
small hand-made indexes (the whole pipeline's index is searched in tests/orchestration)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_jobs import knn_index as knn
from gpu_jobs.retrieval import LakeIndexes, SearchError, SearchOptions, remove_from_indexes
from infra.config import ClipConfig
from infra.delta_store import Lake

DIM = 16
MODEL = ClipConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k")  # names the index's embeddings only


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def save(lake: Lake, variant: str, vectors: np.ndarray, tags: dict[str, list],
         captions: np.ndarray | None = None) -> list[str]:
    """An IDMap2,Flat index of ``vectors`` (ids 0..n-1), and of ``captions`` when given, with its
    metadata file; returns the uids."""
    n = len(vectors)
    plan = knn.plan_index(n, DIM, 1 << 30)
    index = knn.build_index(vectors, np.arange(n), plan)
    text_index = knn.build_index(captions, np.arange(n), plan) if captions is not None else None
    folder = knn.index_folder(lake, variant)
    uids = [f"uid{i:03d}" for i in range(n)]
    columns = {"id": list(range(n)), "uid": uids, "url": [f"http://h.example/{i}.jpg" for i in range(n)],
               "caption": [f"caption {i}" for i in range(n)], "warc_file": ["w"] * n, **tags}
    table = pa.table({f.name: pa.array(columns.get(f.name, [None] * n), f.type) for f in knn.METADATA_SCHEMA})
    manifest = {"model_id": "ViT-B-32/laion2b_s34b_b79k", "vectors": n, "source_version": 0,
                knn.METADATA_MANIFEST_KEY: knn.new_metadata_name()}
    with folder.publish(manifest[knn.METADATA_MANIFEST_KEY]) as handle:
        pq.write_table(table, handle)
    knn.save_index(folder, index, manifest, text_index)
    return uids


@pytest.fixture
def planted(tmp_path):
    """40 random vectors; rows 1 and 2 are near copies of row 0 (cosine > 0.99), row 3 is close to
    the query but unsafe, row 4 close but violent, row 5 close and safe with no violence tag. The
    caption embeddings are the same vectors in reverse order (row 39 holds row 0's)."""
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(40, DIM)))
    query = base[0].copy()
    for row, step in ((1, 0.04), (2, 0.05), (3, 0.6), (4, 0.62), (5, 0.64)):  # cosines .999, .999, .86, .85, .84
        away = rng.normal(size=DIM)
        away -= (away @ query) * query  # orthogonal to the query
        base[row] = unit((query + step * away / np.linalg.norm(away))[None])[0]
    punsafe = [0.01] * 40
    punsafe[3] = 0.9
    pviolence = [0.1] * 40
    pviolence[4] = 0.8
    pviolence[5] = None
    aesthetic = list(np.linspace(0.0, 1.0, 40))
    lake = Lake(str(tmp_path / "lake"))
    save(lake, "research", base, {"punsafe": punsafe, "pviolence": pviolence, "aesthetic": aesthetic}, base[::-1])
    return lake, query


def ids_of(results) -> list[int]:
    return [r.id for r in results]


def test_plain_search_returns_neighbours_with_metadata_for_the_first_num_images(planted):
    lake, query = planted
    index = LakeIndexes(lake, MODEL).get("research")
    results = index.search(query, SearchOptions(num_result_ids=8, num_images=3))
    assert ids_of(results)[:6] == [0, 1, 2, 3, 4, 5]
    assert [r.similarity for r in results] == sorted((r.similarity for r in results), reverse=True)
    assert [r.metadata["url"] for r in results[:3]] == [f"http://h.example/{i}.jpg" for i in range(3)]
    assert all(r.metadata is None for r in results[3:]) and len(results) == 8
    assert index.rows([5, 999, 0, -1, 2**70]) == [index.rows([5])[0], None, index.rows([0])[0], None, None]


def test_filters_drop_duplicates_unsafe_and_violent_results(planted):
    lake, query = planted
    index = LakeIndexes(lake, MODEL).get("research")
    options = dict(num_result_ids=10, num_images=10)
    assert ids_of(index.search(query, SearchOptions(**options, deduplicate=True)))[:4] == [0, 3, 4, 5]
    assert 3 not in ids_of(index.search(query, SearchOptions(**options, use_safety_model=True)))
    hidden = set(range(10)) - set(ids_of(index.search(query, SearchOptions(**options, use_violence_detector=True))))
    assert {4, 5} <= hidden and not {0, 1, 2, 3} & hidden  # violent, and unknown, are hidden
    everything = SearchOptions(**options, deduplicate=True, use_safety_model=True, use_violence_detector=True)
    assert ids_of(index.search(query, everything))[0] == 0 and not {1, 2, 3, 4, 5} & set(ids_of(index.search(query, everything)))
    # Results past num_images (id and similarity only) are filtered all the same.
    past = index.search(query, SearchOptions(num_result_ids=10, num_images=1, deduplicate=True, use_safety_model=True,
                                             use_violence_detector=True))
    assert ids_of(past) == ids_of(index.search(query, everything)) and all(r.metadata is None for r in past[1:])


def test_aesthetic_level_reranks_by_the_stored_tag(planted):
    lake, query = planted
    index = LakeIndexes(lake, MODEL).get("research")
    plain = index.search(query, SearchOptions(num_result_ids=40, num_images=40))
    pretty = index.search(query, SearchOptions(num_result_ids=40, num_images=40, aesthetic_score=9, aesthetic_weight=5.0))
    ugly = index.search(query, SearchOptions(num_result_ids=40, num_images=40, aesthetic_score=0, aesthetic_weight=5.0))
    assert sorted(ids_of(pretty)) == sorted(ids_of(plain))  # the same results, another order
    mean = lambda results: np.mean([r.metadata["aesthetic"] for r in results[:10]])  # noqa: E731
    assert mean(pretty) > mean(plain) > mean(ugly)
    # Similarity stays the cosine to the query.
    assert {r.id: r.similarity for r in pretty} == {r.id: r.similarity for r in plain}


def test_search_over_text_searches_the_caption_embeddings_with_the_same_filters(planted):
    lake, query = planted
    index = LakeIndexes(lake, MODEL).get("research")
    over_text = index.search(query, SearchOptions(num_result_ids=6, num_images=6), "text")
    assert ids_of(over_text) == [39, 38, 37, 36, 35, 34]
    assert [r.metadata["caption"] for r in over_text[:2]] == ["caption 39", "caption 38"]
    # deduplicate compares the caption embeddings searched: 38 and 37 copy 39's.
    assert ids_of(index.search(query, SearchOptions(6, 6, deduplicate=True), "text"))[:2] == [39, 36]
    assert ids_of(index.search(query, SearchOptions(6, 6))) == [0, 1, 2, 3, 4, 5]


def test_bad_queries_are_one_line(planted):
    lake, query = planted
    index = LakeIndexes(lake, MODEL).get("research")
    with pytest.raises(SearchError, match="^the query has 3 dimensions; this index holds 16$"):
        index.search(np.ones(3), SearchOptions(5, 5))
    with pytest.raises(SearchError, match="finite and not all zeros"):
        index.search(np.zeros(DIM), SearchOptions(5, 5))
    with pytest.raises(SearchError, match=r"^no kNN index named 'other'; the lake has \['research'\]$"):
        LakeIndexes(lake, MODEL).get("other")
    bare = Lake(str(lake.root) + "-bare")
    save(bare, "research", unit(np.random.default_rng(1).normal(size=(20, DIM))), {})
    with pytest.raises(SearchError, match=r"no punsafe tag to filter by: configure \[tags.punsafe\]"):
        LakeIndexes(bare, MODEL).get("research").search(query, SearchOptions(5, 5, use_safety_model=True))
    with pytest.raises(SearchError, match="modality 'text': this index holds no caption embeddings"):
        LakeIndexes(bare, MODEL).get("research").search(query, SearchOptions(5, 5), "text")


def test_a_removal_is_never_returned_once_published_and_a_new_save_is_loaded(planted):
    lake, query = planted
    indexes = LakeIndexes(lake, MODEL)  # checks the manifest on every query
    before = indexes.get("research")
    first = before.search(query, SearchOptions(5, 5))[0].metadata["uid"]
    folder = knn.index_folder(lake, "research")
    old_metadata = folder.names("metadata-*.parquet")
    assert remove_from_indexes(lake, {first, "uid002"}, curated_version=1) == {"research": 2}
    after = indexes.get("research")
    assert after is not before and after.vectors == 38
    for modality in ("image", "text"):
        found = after.search(query, SearchOptions(40, 40), modality)
        assert len(found) == 38 and not {first, "uid002"} & {r.metadata["uid"] for r in found}
    assert after.text_index.ntotal == 38
    assert after.rows([0, 2]) == [None, None]
    # The old save's metadata is gone from the lake and from this machine's cache.
    assert not set(folder.names("metadata-*.parquet")) & set(old_metadata)
    cached = [p.read_bytes() for p in knn.metadata_cache(folder).iterdir()]
    assert len(cached) == 1 and b"uid002" not in cached[0] and first.encode() not in cached[0]
    # Unchanged saves are not loaded again.
    assert indexes.get("research") is after


def test_an_old_index_without_a_metadata_file_is_one_line_and_loses_its_uids_file_on_the_next_save(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    folder = knn.index_folder(lake, "research")
    vectors = unit(np.random.default_rng(3).normal(size=(20, DIM)))
    knn.save_index(folder, knn.build_index(vectors, np.arange(20), knn.plan_index(20, DIM, 1 << 30)),
                   {"model_id": "ViT-B-32/laion2b_s34b_b79k", "vectors": 20})
    with pytest.raises(knn.IndexLoadError, match=r"saved without search metadata .*: materialize knn_index again$"):
        LakeIndexes(lake, MODEL).get("research")
    folder.write_bytes("uids.parquet", b"uids of a save before metadata files")
    save(lake, "research", unit(np.random.default_rng(2).normal(size=(20, DIM))), {})
    assert folder.names("*.parquet") == folder.names("metadata-*.parquet") and len(folder.names("*.parquet")) == 1


def test_use_mclip_encodes_with_the_configured_multilingual_tower_or_is_refused(demo_checkpoint):
    from gpu_jobs.retrieval import QueryEncoder
    from infra.config import DownloadConfig

    demo = ClipConfig(model="pairlake-demo-tiny", pretrained="", checkpoint=str(demo_checkpoint), device="cpu")
    plain = QueryEncoder(demo, DownloadConfig())
    with pytest.raises(SearchError, match=r"^use_mclip: no multilingual text model is configured"):
        plain.text("a red circle", multilingual=True)
    # The demo model standing in for a multilingual tower: the same embedding either way.
    both = QueryEncoder(demo, DownloadConfig(), multilingual=demo)
    np.testing.assert_allclose(both.text("a red circle", multilingual=True), plain.text("a red circle"), atol=1e-6)


@pytest.mark.parametrize("model", ["pairlake-demo-tiny", "ViT-B-32"])
def test_text_queries_encode_only_up_to_the_end_of_text_and_match_the_full_context(model):
    """The trimmed text tower gives CLIP's own embedding (random weights suffice: the equality is
    structural), for short, long and context-filling texts in one batch."""
    import torch

    from gpu_jobs.clip_model import load_clip
    from gpu_jobs.retrieval import encode_text

    torch.manual_seed(0)
    clip = load_clip(ClipConfig(model=model, pretrained="", device="cpu"), allow_random_init=True)
    texts = ["a red circle", "", "a photo of " + "a very long caption " * 40, "x"]
    tokens = clip.tokenizer(texts)
    with torch.no_grad():
        full = clip.model.encode_text(tokens)
        for row in range(len(texts)):  # each alone, as a query is encoded, and all together
            torch.testing.assert_close(encode_text(clip.model, tokens[row:row + 1])[0], full[row], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(encode_text(clip.model, tokens), full, atol=1e-5, rtol=1e-4)


def test_concurrent_queries_share_forwards_and_get_what_each_alone_gets(demo_checkpoint):
    import threading
    import time

    import torch

    from gpu_jobs.retrieval import QueryEncoder, _Batches
    from infra.config import DownloadConfig

    # The batcher: queries that arrive while a forward runs make the next batch, in their order.
    calls: list[int] = []
    started, release = threading.Event(), threading.Event()

    def forward(items: list) -> torch.Tensor:
        calls.append(len(items))
        started.set()
        release.wait(5)
        return torch.cat(items)

    batches = _Batches(forward, max_batch=4)
    out: dict[int, np.ndarray] = {}
    first = threading.Thread(target=lambda: out.__setitem__(0, batches(torch.tensor([[1.0, 0.0]]))))
    first.start()
    started.wait(5)
    rest = [threading.Thread(target=lambda i=i: out.__setitem__(i, batches(torch.tensor([[0.0, float(i)]]))))
            for i in range(1, 7)]
    for thread in rest:
        thread.start()
    deadline = time.monotonic() + 5
    while batches._queue.qsize() < 6 and time.monotonic() < deadline:  # all six waiting
        time.sleep(0.01)
    release.set()
    for thread in [first, *rest]:
        thread.join(10)
    assert calls == [1, 4, 2]  # one alone, then the six waiting in batches of at most 4
    assert out[0].tolist() == [1.0, 0.0] and all(out[i].tolist() == [0.0, 1.0] for i in range(1, 7))  # normalised

    # The encoder: eight threads at once get what each query gets alone.
    demo = ClipConfig(model="pairlake-demo-tiny", pretrained="", checkpoint=str(demo_checkpoint), device="cpu")
    encoder = QueryEncoder(demo, DownloadConfig())
    texts = ["a red circle", "a blue square on a white background", "x", "a green triangle"] * 2
    alone = [encoder.text(text) for text in texts]
    together: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, encoder.text(texts[i])))
               for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, vector in enumerate(alone):
        np.testing.assert_allclose(together[i], vector, atol=1e-5)
    with pytest.raises(SearchError, match="no multilingual"):  # refused before any batch
        encoder.text("a", multilingual=True)
