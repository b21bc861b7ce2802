import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gpu_jobs.clip_model import load_clip
from gpu_jobs.clip_scoring import ImageDecodeError, score_images
from gpu_jobs.embedding_format import embedding_from_bytes, embedding_to_bytes, embeddings_from_column
from infra.config import ClipConfig
from infra.tables import CLIP_SCORES
from tests.imaging import captions_for, images_table

FP16_TOL = 2e-3  # a unit vector's entries rounded to float16: relative error 2**-11 each


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip(ClipConfig(model="pairlake-demo-tiny", pretrained="", device="cpu"), allow_random_init=True)


@pytest.fixture(scope="module")
def images():
    return images_table(20, failed=3)


@pytest.fixture(scope="module")
def scores(clip, images):
    return score_images(images, captions_for(images), clip, batch_size=8, workers=0)


def test_schema_rows_and_ids(scores, images, clip):
    assert scores.schema == CLIP_SCORES.schema
    ok = images.filter(pc.equal(images["status"], "ok"))
    assert scores["uid"].to_pylist() == ok["uid"].to_pylist()  # only "ok" rows, input order
    assert scores["warc_file"].to_pylist() == ok["warc_file"].to_pylist()
    assert set(scores["model_id"].to_pylist()) == {clip.model_id}
    assert set(scores["embedding_dim"].to_pylist()) == {64}


def test_embeddings_are_unit_and_similarity_is_their_dot(scores):
    img = embeddings_from_column(scores["image_embedding"], 64)
    txt = embeddings_from_column(scores["text_embedding"], 64)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=FP16_TOL)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=FP16_TOL)
    np.testing.assert_allclose((img * txt).sum(axis=1), scores["similarity"].to_numpy(), atol=FP16_TOL)


def test_matches_plain_open_clip_computation(scores, images, clip):
    """Shipping uint8 and normalising on the device must equal open_clip's own preprocess."""
    ok = images.filter(pc.equal(images["status"], "ok"))
    captions = captions_for(images)
    x = torch.stack([clip.preprocess(Image.open(io.BytesIO(b))) for b in ok["image"].to_pylist()])
    tokens = clip.tokenizer([captions[u] for u in ok["uid"].to_pylist()])
    with torch.inference_mode():
        img = F.normalize(clip.model.encode_image(x), dim=-1)
        txt = F.normalize(clip.model.encode_text(tokens), dim=-1)
    np.testing.assert_allclose(scores["similarity"].to_numpy(), (img * txt).sum(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(embeddings_from_column(scores["image_embedding"], 64), img.numpy(), atol=FP16_TOL)


def test_workers_do_not_change_results(scores, images, clip):
    with_workers = score_images(images, captions_for(images), clip, batch_size=8, workers=2)
    assert with_workers.equals(scores)


def test_captions_as_table(scores, images, clip):
    captions = captions_for(images)
    table = pa.table({"uid": list(captions), "caption": list(captions.values())})
    assert score_images(images, table, clip, batch_size=8, workers=0).equals(scores)


@pytest.mark.parametrize("workers, on_device", [(0, False), (1, False), (0, True), (1, True)])
def test_undecodable_image_names_its_uid(images, clip, workers, on_device):
    broken = images.to_pydict()
    broken["image"][5] = b"\xff\xd8 not a jpeg"
    table = pa.Table.from_pydict(broken, schema=images.schema)
    with pytest.raises(ImageDecodeError, match=f"image of uid {broken['uid'][5]} does not decode"):
        score_images(table, captions_for(images), clip, batch_size=8, workers=workers, decode_on_device=on_device)


def _png(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("workers", [0, 1])
def test_decoding_on_the_device_embeds_like_the_cpu_workers(scores, images, clip, workers):
    """The GPU path (nvjpeg decode, resize and crop on the device), run here on the CPU device: the
    same rows, the same text embeddings, image embeddings equal up to the two resizers' rounding.
    A PNG among the JPEGs is decoded on the CPU beside them."""
    mixed = images.to_pydict()
    mixed["image"][3] = _png(mixed["image"][3])
    mixed = pa.Table.from_pydict(mixed, schema=images.schema)
    on_device = score_images(mixed, captions_for(images), clip, batch_size=8, workers=workers, decode_on_device=True)
    assert on_device["uid"].equals(scores["uid"])
    assert on_device["text_embedding"].equals(scores["text_embedding"])
    cpu = embeddings_from_column(scores["image_embedding"], 64)
    device = embeddings_from_column(on_device["image_embedding"], 64)
    cosines = (cpu * device).sum(axis=1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(device, axis=1)
    assert cosines.min() > 0.999, cosines.min()  # 0.9999992 here


def test_missing_caption_names_its_uid(images, clip):
    captions = captions_for(images)
    del captions[images["uid"][2].as_py()]
    with pytest.raises(KeyError, match=images["uid"][2].as_py()):
        score_images(images, captions, clip, batch_size=8, workers=0)


def test_no_ok_rows_gives_empty_table(images, clip):
    failed = images.filter(pc.equal(images["status"], "failed"))
    out = score_images(failed, {}, clip, batch_size=8, workers=0)
    assert out.num_rows == 0 and out.schema == CLIP_SCORES.schema


def test_embedding_bytes_round_trip():
    vec = np.array([0.6, -0.8, 0.0], dtype=np.float32)
    data = embedding_to_bytes(vec)
    assert data == np.array([0.6, -0.8, 0.0], dtype="<f2").tobytes()
    np.testing.assert_allclose(embedding_from_bytes(data, 3), vec, atol=FP16_TOL)
    with pytest.raises(ValueError, match="expected 8"):
        embedding_from_bytes(data, 4)


def test_embeddings_from_chunked_and_sliced_column():
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    column = pa.chunked_array([[embedding_to_bytes(r) for r in rows[:1]], [embedding_to_bytes(r) for r in rows[1:]]])
    np.testing.assert_array_equal(embeddings_from_column(column, 3), rows)
    np.testing.assert_array_equal(embeddings_from_column(column.chunk(1).slice(1), 3), rows[2:])
    assert embeddings_from_column(pa.chunked_array([], pa.binary()), 3).shape == (0, 3)
    with pytest.raises(ValueError, match=r"must all be 4 bytes \(dim 2"):
        embeddings_from_column(column, 2)
