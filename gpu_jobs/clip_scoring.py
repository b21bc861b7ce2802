"""CLIP scoring of downloaded images against their captions, into rows of the CLIP_SCORES table.

Decoding, resizing and tokenising run in DataLoader worker processes, one whole batch per fetch,
so the model only waits on them when the CPU side is slower than the forward pass. Workers ship
uint8 pixels (4x less shared memory and host-to-device traffic than float32); the exact
``ToTensor`` + ``Normalize`` arithmetic of open_clip's transform is then done on the device.

On a CUDA device the JPEGs are decoded there instead (torchvision's nvjpeg ``decode_jpeg``, as
NeMo Curator decodes with DALI): a GPU embeds ViT-B/32 faster than a few CPU cores decode, so the
workers then only tokenise and hand over the raw bytes; the model's resize and crop run on the
device too (other formats are decoded on the CPU beside them). torchvision 0.29 marks its image
decoders deprecated in favour of TorchCodec, which the stack does not install; they still work.

Embeddings are stored L2-normalised as float16 little-endian bytes (half the size of float32 and
ample for cosine/kNN work); the similarity is computed from the float32 embeddings before rounding.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import Compose, Normalize, ToTensor
from tqdm import tqdm

from gpu_jobs.clip_model import LoadedClip
from gpu_jobs.embedding_format import EMBEDDING_DTYPE
from infra.tables import CLIP_SCORES

class ImageDecodeError(RuntimeError):
    """An image marked "ok" by the downloader does not decode."""


class _PairBatches(Dataset):
    """Map-style dataset indexed by a list of row positions: returns one whole preprocessed batch
    (uint8 NCHW pixels), or with ``raw`` the images' undecoded bytes (a list of uint8 tensors)."""

    def __init__(self, images: pa.Array, captions: Sequence[str], pil_stage: Callable, tokenizer: Callable,
                 raw: bool = False) -> None:
        self.images = images
        self.captions = captions
        self.pil_stage = pil_stage
        self.tokenizer = tokenizer
        self.raw = raw

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor | list | None, torch.Tensor, list]:
        pixels, failures = [], []
        for pos in positions:
            data = self.images[pos].as_py()
            try:
                if data is None:
                    raise ValueError("no image bytes")
                if self.raw:
                    pixels.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
                    continue
                with Image.open(io.BytesIO(data)) as img:
                    pixels.append(np.asarray(self.pil_stage(img)))
            except Exception as exc:  # noqa: BLE001 - reported per row to the caller, see score_images
                failures.append((pos, f"{type(exc).__name__}: {exc}"))
        if failures or self.raw:
            batch = None if failures else pixels
        else:
            batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
        tokens = self.tokenizer([self.captions[pos] for pos in positions])
        return torch.tensor(positions), batch, tokens, failures


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and data[0].item() == 0xFF and data[1].item() == 0xD8


def _decode_on_device(raw: list[torch.Tensor], device: torch.device, geometric: Callable) -> torch.Tensor:
    """Raw image bytes -> the model's uint8 NCHW input on ``device``: JPEGs decoded there in one
    batched call, any other format on the CPU; then the model's resize and crop, image by image
    (stored images need not share a size). Raises ValueError naming the batch position that fails."""
    decoded: list[torch.Tensor | None] = [None] * len(raw)
    jpegs = [i for i, data in enumerate(raw) if _is_jpeg(data)]
    if jpegs:
        try:
            for i, image in zip(jpegs, decode_jpeg([raw[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)):
                decoded[i] = image
        except RuntimeError:
            pass  # one bad file fails the batched call: decode one by one below to name it
    for i, data in enumerate(raw):
        if decoded[i] is None:
            try:
                image = decode_jpeg(data, mode=ImageReadMode.RGB, device=device) if _is_jpeg(data) else \
                    decode_image(data, mode=ImageReadMode.RGB)
            except RuntimeError as exc:
                raise ValueError(i, f"RuntimeError: {exc}") from None
            decoded[i] = image.to(device)
    return torch.stack([geometric(image) for image in decoded])


def _split_preprocess(preprocess: Callable) -> tuple[Compose, Normalize]:
    """open_clip's transform = [PIL resize/crop/RGB..., ToTensor, Normalize]: split off the last two."""
    steps = getattr(preprocess, "transforms", [])
    if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
        raise ValueError(f"expected an open_clip inference transform ending in ToTensor, Normalize; got {preprocess}")
    return Compose(steps[:-2]), steps[-1]


@contextlib.contextmanager
def _model_threads_beside_workers(device: torch.device, workers: int) -> Iterator[None]:
    """On CPU, leave the decode workers their cores: give the model ``cores - workers`` intra-op threads.

    Oversubscribed OpenMP threads spin-wait on each other; on 2 cores, 2 model threads beside busy
    workers ran 2-3x slower than 1 (benchmarks/bench_clip_scoring.py). Restored afterwards.
    """
    before = torch.get_num_threads()
    if device.type == "cpu" and workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, min(before, cores - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _captions_by_uid(captions: dict[str, str] | pa.Table) -> dict[str, str]:
    if isinstance(captions, pa.Table):
        return dict(zip(captions.column("uid").to_pylist(), captions.column("caption").to_pylist(), strict=True))
    return captions


def score_images(
    images: pa.Table,
    captions: dict[str, str] | pa.Table,
    clip: LoadedClip,
    batch_size: int,
    workers: int,
    progress: bool = False,
    decode_on_device: bool | None = None,
) -> pa.Table:
    """Embed the "ok" rows of an IMAGES table and their captions; return rows of CLIP_SCORES, in input order.

    Images are decoded on the model's device when it is a CUDA device (``decode_on_device`` None),
    else by the CPU workers; True or False chooses (the tests run the device path on the CPU).

    An "ok" image that fails to decode raises ``ImageDecodeError`` naming its uid rather than being
    skipped: the downloader already decoded and re-encoded every such image, so a failure here means
    corrupt data or a bug, and a silently missing row would just drop the pair from the kept set.
    """
    ok = images.select(["uid", "warc_file", "image"]).filter(pc.equal(images["status"], "ok"))
    uids = ok.column("uid").to_pylist()
    by_uid = _captions_by_uid(captions)
    missing = next((uid for uid in uids if uid not in by_uid), None)
    if missing is not None:
        raise KeyError(f"no caption for uid {missing}")
    # large_binary: a partition's images may exceed the 2 GiB a single binary array can hold.
    pixels = ok.column("image").cast(pa.large_binary()).combine_chunks()
    pil_stage, normalize = _split_preprocess(clip.preprocess)
    device = clip.device
    on_cuda = device.type == "cuda"
    raw = on_cuda if decode_on_device is None else decode_on_device
    dataset = _PairBatches(pixels, [by_uid[uid] for uid in uids], pil_stage, clip.tokenizer, raw=raw)
    loader = DataLoader(
        dataset,
        sampler=BatchSampler(SequentialSampler(range(len(uids))), batch_size, drop_last=False),
        batch_size=None,  # the dataset returns whole batches
        num_workers=workers,  # each keeps 2 batches ready (torch's prefetch_factor default)
        pin_memory=on_cuda,
    )
    if on_cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast("cuda", dtype=amp_dtype)
    else:
        autocast = contextlib.nullcontext()  # fp32 on CPU: bf16 autocast is slower there on most CPUs
    mean = torch.tensor(normalize.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(normalize.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    dim = clip.embedding_dim
    image_emb = np.empty((len(uids), dim), dtype=EMBEDDING_DTYPE)
    text_emb = np.empty((len(uids), dim), dtype=EMBEDDING_DTYPE)
    similarity = np.empty(len(uids), dtype=np.float32)

    def store(result: tuple) -> None:
        positions, img, txt, sim, done = result
        if done is not None:
            done.synchronize()
        image_emb[positions] = img.numpy()
        text_emb[positions] = txt.numpy()
        similarity[positions] = sim.numpy()

    pending = None
    with (
        _model_threads_beside_workers(device, workers),
        torch.inference_mode(),
        tqdm(total=len(uids), unit="img", disable=not progress) as bar,
    ):
        for positions, batch, tokens, failures in loader:
            if failures:
                pos, reason = failures[0]
                more = f" (and {len(failures) - 1} more in its batch)" if len(failures) > 1 else ""
                raise ImageDecodeError(f"image of uid {uids[pos]} does not decode: {reason}{more}")
            if raw:
                try:
                    batch = _decode_on_device(batch, device, pil_stage)
                except ValueError as exc:
                    index, reason = exc.args
                    raise ImageDecodeError(f"image of uid {uids[int(positions[index])]} does not decode: {reason}") from None
            x = batch.to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
            tokens = tokens.to(device, non_blocking=True)
            with autocast:
                img = clip.model.encode_image(x)
                txt = clip.model.encode_text(tokens)
            img = F.normalize(img.float(), dim=-1)
            txt = F.normalize(txt.float(), dim=-1)
            sim = (img * txt).sum(dim=-1)
            # Copy results back asynchronously and store them one batch later, so the device is
            # already busy with the next batch while the host waits for this one.
            result = [t.to("cpu", non_blocking=True) for t in (img.half(), txt.half(), sim)]
            done = torch.cuda.Event() if on_cuda else None
            if done is not None:
                done.record()
            if pending is not None:
                store(pending)
            pending = (positions.numpy(), *result, done)
            bar.update(len(positions))
        if pending is not None:
            store(pending)

    return pa.Table.from_arrays(
        [
            ok.column("uid"),
            ok.column("warc_file"),
            pa.array([clip.model_id] * len(uids), pa.string()),
            pa.array(np.full(len(uids), dim, dtype=np.int32)),
            _binary_column(image_emb),
            _binary_column(text_emb),
            pa.array(similarity),
        ],
        schema=CLIP_SCORES.schema,
    )


def _binary_column(matrix: np.ndarray) -> pa.ChunkedArray:
    """[rows, dim] float16 matrix -> binary column of one value per row, sharing the matrix's bytes."""
    row_bytes = matrix.shape[1] * matrix.itemsize
    rows_per_chunk = max(1, (2**31 - 1) // row_bytes)  # binary offsets are int32
    matrix = np.ascontiguousarray(matrix)
    chunks = []
    for start in range(0, max(len(matrix), 1), rows_per_chunk):
        part = matrix[start : start + rows_per_chunk]
        offsets = np.arange(len(part) + 1, dtype=np.int32) * row_bytes
        chunks.append(pa.Array.from_buffers(pa.binary(), len(part), [None, pa.py_buffer(offsets), pa.py_buffer(part)]))
    return pa.chunked_array(chunks, pa.binary())
