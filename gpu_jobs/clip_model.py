"""Build an OpenCLIP model from ``ClipConfig``: architecture, weights, preprocess and tokenizer.

Weights come from a local checkpoint file (``clip.checkpoint``, wins) or an open_clip pretrained
tag (``clip.pretrained``) whose file must already be in the local cache: scoring jobs run where
there is no network, so we resolve the file ourselves and never let open_clip/HF start a download.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.resources
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from infra.checksums import file_sha256
from gpu_jobs.devices import ClipModelError, resolve_device
from infra.config import ClipConfig

# open_clip (and torch, torchvision) load where a model is built or its config read, never with this
# module: the Dagster definitions import it for model_identity, and open_clip's import alone costs
# ~20 CPU-s (torchvision pulls torch._dynamo).
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@dataclass(frozen=True)
class LoadedClip:
    model: torch.nn.Module  # eval mode, on ``device``
    preprocess: Callable  # PIL image -> normalised float tensor (open_clip's inference transform)
    tokenizer: Callable  # list[str] -> LongTensor [n, context_length]
    model_id: str  # "<model>/<pretrained tag>" or "<model>/sha256:<12 hex of checkpoint>"
    embedding_dim: int
    device: torch.device


@functools.cache
def register_model_configs() -> None:
    """Make the project's model configs (``gpu_jobs/model_configs/*.json``) known to open_clip, once.

    On a cluster's executors the project arrives as a zip (``infra.spark``), where open_clip cannot
    list a folder: the configs are read through importlib and registered from a temporary copy,
    removed at once (open_clip reads the files when they are added; a worker may exit without atexit)."""
    import open_clip

    if MODEL_CONFIG_DIR.is_dir():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        return
    with tempfile.TemporaryDirectory(prefix="pairlake-model-configs-") as copy:
        for entry in importlib.resources.files("gpu_jobs").joinpath("model_configs").iterdir():
            if entry.name.endswith(".json"):
                (Path(copy) / entry.name).write_bytes(entry.read_bytes())
        open_clip.add_model_config(copy)


def model_config(name: str) -> dict:
    """open_clip's architecture config for ``name`` (the project's own configs included)."""
    import open_clip

    register_model_configs()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ClipModelError(f"unknown CLIP model {name!r} (clip.model){hint}")
    return model_cfg


def load_clip(config: ClipConfig, allow_random_init: bool = False, device: torch.device | None = None) -> LoadedClip:
    """Build the configured model in eval mode on ``device`` (the configured device when None).

    With neither ``checkpoint`` nor ``pretrained`` set the weights would be random, which is only
    meaningful for timing and plumbing tests, so it needs ``allow_random_init=True``.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    name = config.model
    model_cfg = model_config(name)
    device = resolve_device(config.device) if device is None else device

    create_kwargs: dict = {}
    if config.checkpoint:
        path = Path(config.checkpoint).expanduser()
        if not path.is_file():
            raise ClipModelError(f"clip.checkpoint file not found: {path}")
        create_kwargs["pretrained"] = str(path)
    elif config.pretrained:
        tag = _pretrained_tag(config)
        weights, tag_cfg = _cached_pretrained_file(name, tag, model_cfg)
        create_kwargs["pretrained"] = weights
        # A tag can carry its own mean/std/interpolation; open_clip applies them only when it resolves
        # the tag itself, so pass them on. "size" always follows the architecture.
        create_kwargs["force_preprocess_cfg"] = {k: v for k, v in tag_cfg.items() if k != "size"}
    elif not allow_random_init:
        raise ClipModelError("no CLIP weights configured: set clip.checkpoint or clip.pretrained")
    model_id = model_identity(config)

    try:
        # pretrained_text=False: never fetch HF base text-tower weights; a full CLIP checkpoint covers them.
        with _hf_hub_offline():
            model = open_clip.create_model(name, device=device, pretrained_text=False, **create_kwargs)
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - open_clip raises anything from KeyError to HTTP errors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClipModelError(f"could not build CLIP model {model_id} from local files only: {first_line}") from exc
    model.eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    log.info("loaded CLIP %s on %s", model_id, device)
    return LoadedClip(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        model_id=model_id,
        embedding_dim=int(model_cfg["embed_dim"]),
        device=device,
    )


def model_identity(config: ClipConfig) -> str:
    """The ``model_id`` stored with embeddings made by ``config``'s weights, without building the
    model: "<model>/sha256:<checkpoint digest>", "<model>/<pretrained tag>" or "<model>/random-init"."""
    if config.checkpoint:
        path = Path(config.checkpoint).expanduser()
        if not path.is_file():
            raise ClipModelError(f"clip.checkpoint file not found: {path}")
        return f"{config.model}/sha256:{file_sha256(path)[:12]}"
    if config.pretrained:
        return f"{config.model}/{_pretrained_tag(config)}"
    return f"{config.model}/random-init"


def _pretrained_tag(config: ClipConfig) -> str:
    return config.pretrained.lower().replace("-", "_")  # open_clip's own tag normalisation


@contextlib.contextmanager
def _hf_hub_offline() -> Iterator[None]:
    """HF-hub lookups (HF text towers' configs, HF tokenizers) may use the local cache only.

    huggingface_hub reads its offline flag at call time, so this fails them fast with an
    "offline mode" error instead of a download attempt that would hang without network.
    """
    import huggingface_hub.constants

    before = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = before


def _cached_pretrained_file(name: str, tag: str, model_cfg: dict) -> tuple[str, dict]:
    """The local file of an open_clip pretrained tag, looked up exactly where open_clip would cache it."""
    import huggingface_hub
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        available = ", ".join(tags[:6]) + (f" (+{len(tags) - 6} more)" if len(tags) > 6 else "")
        available = available or "none (use clip.checkpoint)"
        raise ClipModelError(f"clip.pretrained {tag!r} is not available for {name}; available: {available}")
    tag_quick_gelu = tag_cfg.get("quick_gelu", False)
    if tag_quick_gelu != model_cfg.get("quick_gelu", False):
        # open_clip only warns here, and the scores come out silently wrong.
        other = f"{name}-quickgelu" if tag_quick_gelu else name.removesuffix("-quickgelu")
        raise ClipModelError(
            f"clip.pretrained {tag!r} was trained with quick_gelu={tag_quick_gelu}, unlike {name}; use model {other}"
        )
    if "file" in tag_cfg:
        return tag_cfg["file"], tag_cfg

    candidates: list[str] = []
    hf_hub = tag_cfg.get("hf_hub", "")
    if hf_hub:
        repo_id, filename = os.path.split(hf_hub)
        filename = filename or HF_WEIGHTS_NAME
        safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else os.path.splitext(filename)[0] + ".safetensors"
        for fname in (safe, filename):  # open_clip prefers the safetensors variant
            found = huggingface_hub.try_to_load_from_cache(repo_id, fname)
            if isinstance(found, str):
                return found, tag_cfg
        candidates.append(f"hf-hub {repo_id}/{filename}")
    url = tag_cfg.get("url", "")
    if url:
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if cached.is_file():
            return str(cached), tag_cfg
        candidates.append(str(cached))
    raise ClipModelError(
        f"weights for {name}/{tag} are not present locally ({' or '.join(candidates)}) and pairlake never "
        f"downloads them: fetch them once where there is network, e.g. "
        f"open_clip.create_model({name!r}, pretrained={tag!r}), or set clip.checkpoint to a local file"
    )
