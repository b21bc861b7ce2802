"""Safety and quality scorers over stored CLIP image embeddings, so tagging never re-reads images.

Three kinds:

* heads loaded from files: a small torch module over embeddings (``<name>.pt``) with a JSON
  sidecar (``<name>.json``) saying what it computes and which CLIP embeddings it was trained on.
  Layouts are data (``LAYOUTS``), among them LAION's published aesthetic and H/14 NSFW heads,
  whose ``.pth`` files come without a sidecar and load by naming the layout;
* zero-shot prompt scorers (``ZeroShotScorer``): the probability of a positive prompt set
  against a negative one, from the CLIP text tower, for labels nobody has trained a head for;
* heads trained here (``train_head``) on labelled embeddings, deterministic from a seed.

A head only means something on the embedding space it was trained on, so ``check_compatible``
refuses embeddings of another width or CLIP architecture before anything is scored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpu_jobs.devices import resolve_device
from infra.config import ConfigError
from infra.lake_storage import Folder, as_folder

if TYPE_CHECKING:  # heads run over stored embeddings without open_clip (gpu_jobs.devices)
    from gpu_jobs.clip_model import LoadedClip

OUTPUTS = ("probability", "score")  # probability: sigmoid of the last layer; score: its raw value
MIN_ROWS_PER_CLASS = 5  # fewer cannot give both a training and a held-out row of each label
SCORE_BATCH_ROWS = 8192

# A layer step is ("linear", out_features) | ("dropout", p) | ("relu",). Dropouts are kept in the
# published layouts although scoring runs in eval mode: they take up indices of the nn.Sequential,
# and so fix the state-dict key names of the published weight files.
Step = tuple

# christophschuhmann/improved-aesthetic-predictor, simple_inference.py, class MLP(input_size=768):
# ``self.layers = nn.Sequential(...)`` as below (its ReLUs are commented out, so it is affine end to
# end); weights such as sac+logos+ava1-l14-linearMSE.pth hold layers.{0,2,4,6,7}.{weight,bias}.
# Input: L2-normalised OpenAI CLIP ViT-L/14 image embeddings (the script's ``normalized``); output:
# a mean rating on the AVA 1-10 scale, regressed with MSE, no sigmoid.
LAION_AESTHETIC_V2: tuple[Step, ...] = (
    ("linear", 1024),
    ("dropout", 0.2),
    ("linear", 128),
    ("dropout", 0.2),
    ("linear", 64),
    ("dropout", 0.1),
    ("linear", 16),
    ("linear", 1),
)

# LAION-AI/CLIP-based-NSFW-Detector, h14_nsfw_model.py, class H14_NSFW_Detector(input_size=1024),
# identical in clip-retrieval (h14_nsfw_model.py) and NVIDIA NeMo Curator (image/classifiers/nsfw.py),
# which both load h14_nsfw.pth into it with a strict load_state_dict: weights hold
# layers.{0,3,6,9,12,15,16}.{weight,bias}. Input: open_clip ViT-H-14 image embeddings, which both
# normalise before use; output: trained with MSE on 0/1 targets (old/docs/train_h14_nsfw.md) and used
# raw by both, so a score near [0, 1], not a bounded probability.
LAION_NSFW_H14: tuple[Step, ...] = (
    ("linear", 1024),
    ("relu",),
    ("dropout", 0.2),
    ("linear", 2048),
    ("relu",),
    ("dropout", 0.2),
    ("linear", 1024),
    ("relu",),
    ("dropout", 0.2),
    ("linear", 256),
    ("relu",),
    ("dropout", 0.2),
    ("linear", 128),
    ("relu",),
    ("dropout", 0.2),
    ("linear", 16),
    ("linear", 1),
)


class HeadError(ConfigError):
    """A head cannot be loaded, trained or used as asked: wrong file, layout, labels or embeddings."""


@dataclass(frozen=True)
class HeadSpec:
    """A head's sidecar: what it computes and which embeddings it was trained on."""

    name: str  # also the file stem of <name>.pt / <name>.json
    layout: str  # a key of LAYOUTS
    input_width: int  # embedding width it takes
    clip_model: str  # open_clip architecture it was trained for, e.g. "ViT-L-14"
    output: str  # one of OUTPUTS
    normalise_input: bool  # L2-normalise embeddings before the first layer
    hidden: tuple[int, ...] = ()  # hidden widths, for layouts that take them ("mlp")


@dataclass(frozen=True)
class Layout:
    """How a layout builds its layers from a spec. Published layouts also imply the sidecar fields
    their weight files come without, so such a file loads by naming the layout alone."""

    steps: Callable[[HeadSpec], Sequence[Step]]
    takes_hidden: bool = False
    implies: dict[str, Any] = field(default_factory=dict)


def _mlp_steps(spec: HeadSpec) -> list[Step]:
    return [step for width in spec.hidden for step in (("linear", width), ("relu",))] + [("linear", 1)]


LAYOUTS: dict[str, Layout] = {
    "linear": Layout(lambda spec: [("linear", 1)]),
    "mlp": Layout(_mlp_steps, takes_hidden=True),
    "laion-aesthetic-v2": Layout(
        lambda spec: LAION_AESTHETIC_V2,
        implies={"input_width": 768, "clip_model": "ViT-L-14", "output": "score", "normalise_input": True},
    ),
    "laion-nsfw-h14": Layout(
        lambda spec: LAION_NSFW_H14,
        implies={"input_width": 1024, "clip_model": "ViT-H-14", "output": "score", "normalise_input": True},
    ),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # the name is a file stem


def model_family(clip_model: str) -> str:
    """The open_clip architecture of a model name or model id ("ViT-L-14-quickgelu/openai" -> "ViT-L-14").

    The pretrained tag is dropped, and so is "-quickgelu": pairlake must name OpenAI's weights
    "<arch>-quickgelu" (see clip_model.py), and LAION's heads were trained on exactly those.
    """
    return clip_model.split("/", 1)[0].removesuffix("-quickgelu")


def _sequential(width: int, steps: Sequence[Step]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for kind, *args in steps:
        if kind == "linear":
            modules.append(nn.Linear(width, args[0]))
            width = args[0]
        elif kind == "dropout":
            modules.append(nn.Dropout(args[0]))
        elif kind == "relu":
            modules.append(nn.ReLU())
        else:
            raise ValueError(f"unknown layer step {kind!r}")
    return nn.Sequential(*modules)


class EmbeddingHead(nn.Module):
    """A scorer over CLIP image embeddings. ``layers`` is an nn.Sequential, so the state-dict keys
    are ``layers.<i>.weight``/``bias`` as in LAION's published files."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        _validate_spec(spec)
        self.spec = spec
        self.layers = _sequential(spec.input_width, LAYOUTS[spec.layout].steps(spec))
        self.eval()

    @property
    def name(self) -> str:
        return self.spec.name

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The last layer's raw value, one per row (before the sigmoid of probability heads)."""
        x = F.normalize(embeddings, dim=-1) if self.spec.normalise_input else embeddings
        return self.layers(x).squeeze(-1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        raw = self.logits(embeddings)
        return torch.sigmoid(raw) if self.spec.output == "probability" else raw

    def check_compatible(self, clip_model: str, width: int) -> None:
        """Refuse embeddings of another width or CLIP architecture: scores on them are meaningless."""
        spec = self.spec
        if width != spec.input_width or model_family(clip_model) != model_family(spec.clip_model):
            raise HeadError(
                f"head {spec.name!r} ({spec.layout}) takes {spec.input_width}-wide {model_family(spec.clip_model)} "
                f"image embeddings, given {width}-wide embeddings of {clip_model}"
            )

    @torch.inference_mode()
    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """One float32 value per row of ``embeddings`` [rows, input_width], on the head's device."""
        matrix = np.asarray(embeddings)
        if matrix.ndim != 2 or matrix.shape[1] != self.spec.input_width:
            raise HeadError(
                f"head {self.name!r} takes embeddings of shape [rows, {self.spec.input_width}], given {list(matrix.shape)}"
            )
        device = next(self.parameters()).device
        out = np.empty(len(matrix), dtype=np.float32)
        for start in range(0, len(matrix), SCORE_BATCH_ROWS):
            chunk = torch.from_numpy(np.ascontiguousarray(matrix[start : start + SCORE_BATCH_ROWS], dtype=np.float32))
            out[start : start + len(chunk)] = self(chunk.to(device)).float().cpu().numpy()
        return out


def _validate_spec(spec: HeadSpec) -> None:
    where = f"head {spec.name!r}"
    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        raise HeadError(f"head name {spec.name!r} must be a file stem: letters, digits, '._+-', not starting with a symbol")
    if spec.layout not in LAYOUTS:
        raise HeadError(f"{where}: unknown layout {spec.layout!r}; known: {', '.join(LAYOUTS)}")
    if not isinstance(spec.input_width, int) or isinstance(spec.input_width, bool) or spec.input_width <= 0:
        raise HeadError(f"{where}: input_width must be a positive integer, got {spec.input_width!r}")
    if not isinstance(spec.clip_model, str) or not spec.clip_model:
        raise HeadError(f"{where}: clip_model must name an open_clip model, got {spec.clip_model!r}")
    if spec.output not in OUTPUTS:
        raise HeadError(f"{where}: output must be one of {', '.join(OUTPUTS)}, got {spec.output!r}")
    if not isinstance(spec.normalise_input, bool):
        raise HeadError(f"{where}: normalise_input must be true or false, got {spec.normalise_input!r}")
    takes_hidden = LAYOUTS[spec.layout].takes_hidden
    if takes_hidden and not spec.hidden:
        raise HeadError(f"{where}: layout {spec.layout!r} needs hidden widths, e.g. \"hidden\": [256]")
    if not takes_hidden and spec.hidden:
        raise HeadError(f"{where}: layout {spec.layout!r} takes no hidden widths, got {list(spec.hidden)}")
    if any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in spec.hidden):
        raise HeadError(f"{where}: hidden widths must be positive integers, got {list(spec.hidden)}")


def _spec_from_fields(values: dict[str, Any], source: Path) -> HeadSpec:
    """A spec from sidecar values over the layout's implied ones; unknown or missing keys are errors."""
    known = [f.name for f in fields(HeadSpec)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise HeadError(f"{source}: unknown sidecar keys {', '.join(unknown)}; known: {', '.join(known)}")
    layout = values.get("layout")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise HeadError(f"{source}: unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    merged = {**LAYOUTS[layout].implies, **values}
    missing = [k for k in known if k not in merged and k != "hidden"]
    if missing:
        raise HeadError(f"{source}: sidecar lacks {', '.join(missing)}")
    hidden = merged.get("hidden", ())
    if not isinstance(hidden, (list, tuple)):
        raise HeadError(f"{source}: hidden must be a list of widths, got {hidden!r}")
    return HeadSpec(**{**merged, "hidden": tuple(hidden)})


def _load_state(path: Path, head: EmbeddingHead) -> None:
    """Load weights strictly, with a one-line error instead of torch's multi-line one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling fails with many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadError(f"{path} is not a loadable state dict: {first}") from exc
    if not isinstance(state, dict):
        raise HeadError(f"{path} holds a {type(state).__name__}, not a state dict")
    expected = head.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} is {list(state[k].shape)}, not {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HeadError(
            f"{path} does not fit layout {head.spec.layout!r} at width {head.spec.input_width}: "
            f"{'; '.join(problems[:3])}{more}"
        )
    head.load_state_dict(state)


def load_head(path: str | Path, layout: str | None = None, device: str = "auto") -> EmbeddingHead:
    """A head from its weights file and the sidecar beside it (``<stem>.json``).

    A published file without a sidecar loads by naming its layout, which implies the rest; its
    name is then the file stem. ``device``: auto (cuda when available), cpu or cuda.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"head weights not found: {path}")
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            values = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise HeadError(f"{sidecar} is not valid JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise HeadError(f"{sidecar} must hold a JSON object")
        if layout is not None and values.get("layout") != layout:
            raise HeadError(f"{sidecar} says layout {values.get('layout')!r}, but layout {layout!r} was asked for")
        spec = _spec_from_fields(values, sidecar)
    elif layout is None:
        raise HeadError(f"{path} has no sidecar {sidecar.name}: name its layout (one of {', '.join(LAYOUTS)})")
    elif layout in LAYOUTS and not LAYOUTS[layout].implies:
        raise HeadError(f"layout {layout!r} implies no input width or CLIP model: {path} needs a sidecar {sidecar.name}")
    else:
        spec = _spec_from_fields({"name": path.stem, "layout": layout}, path)
    head = EmbeddingHead(spec)
    _load_state(path, head)
    return head.to(resolve_device("auto") if device == "auto" else torch.device(device))


def save_head(head: EmbeddingHead, out: Folder | str | Path) -> str:
    """Write ``<name>.pt`` and ``<name>.json`` into ``out`` (a Folder of the lake, or a local
    folder); return the weights' location.

    Each file is published whole (``Folder.publish``), readers never see half a file. The sidecar
    goes last, so a new head's pair is complete once its sidecar exists.
    """
    folder = as_folder(out)
    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    with folder.publish(f"{head.name}.pt") as fh:
        torch.save(state, fh)
    sidecar = {**asdict(head.spec), "hidden": list(head.spec.hidden)}
    folder.write_bytes(f"{head.name}.json", (json.dumps(sidecar, indent=1) + "\n").encode())
    return folder.file(f"{head.name}.pt")


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class ZeroShotScorer:
    """Probability that an image belongs to a positive prompt set rather than a negative one.

    Per image: s+ = the highest cosine to any positive prompt, s- = the highest to any negative
    one, and p = softmax(logit_scale * [s+, s-])[0] = sigmoid(logit_scale * (s+ - s-)), with the
    model's own trained logit scale, as CLIP's zero-shot classification does. Max, not mean: the
    prompts of a set name different things ("a nude photo", "a gory photo"; "a watermark", "stock
    photo text") and an image matching any one of them belongs to the set, which a mean over the
    set would dilute by the prompts it does not match.
    """

    def __init__(self, name: str, positive_prompts: Sequence[str], negative_prompts: Sequence[str]) -> None:
        for kind, prompts in (("positive", positive_prompts), ("negative", negative_prompts)):
            if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise HeadError(f"zero-shot scorer {name!r}: {kind} prompts must be a non-empty list of non-empty strings")
        self.name = name
        self.positive_prompts = list(positive_prompts)
        self.negative_prompts = list(negative_prompts)
        self.clip_model: str | None = None  # the model id it was fitted with
        self._positive = self._negative = np.empty((0, 0), dtype=np.float32)
        self._logit_scale = 0.0

    @torch.inference_mode()
    def fit(self, clip: LoadedClip) -> ZeroShotScorer:
        """Encode the prompts once with ``clip``'s text tower; returns self."""
        prompts = self.positive_prompts + self.negative_prompts
        tokens = clip.tokenizer(prompts).to(clip.device)
        text = F.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu().numpy()
        self._positive, self._negative = text[: len(self.positive_prompts)], text[len(self.positive_prompts) :]
        self._logit_scale = float(clip.model.logit_scale.exp())
        self.clip_model = clip.model_id
        return self

    def check_compatible(self, clip_model: str, width: int) -> None:
        """Refuse image embeddings from any model but the one fitted with: unlike a head's, the prompt
        embeddings belong to one set of weights, so here the pretrained tag matters too."""
        if self.clip_model is None:
            raise HeadError(f"zero-shot scorer {self.name!r} is not fitted: call fit(clip) first")
        if clip_model != self.clip_model or width != self._positive.shape[1]:
            raise HeadError(
                f"zero-shot scorer {self.name!r} was fitted with {self.clip_model} ({self._positive.shape[1]}-wide), "
                f"given {width}-wide embeddings of {clip_model}"
            )

    def score(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Probability of the positive set, float32, one per row of ``image_embeddings``."""
        if self.clip_model is None:
            raise HeadError(f"zero-shot scorer {self.name!r} is not fitted: call fit(clip) first")
        matrix = np.asarray(image_embeddings, dtype=np.float32)
        width = self._positive.shape[1]
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise HeadError(
                f"zero-shot scorer {self.name!r} takes embeddings of shape [rows, {width}], given {list(matrix.shape)}"
            )
        images = _unit_rows(matrix)  # stored embeddings are unit length only up to float16 rounding
        margin = (images @ self._positive.T).max(axis=1) - (images @ self._negative.T).max(axis=1)
        return (0.5 * (1.0 + np.tanh(0.5 * self._logit_scale * margin))).astype(np.float32)  # sigmoid, no overflow


@dataclass(frozen=True)
class TrainReport:
    """What a trained head was fitted on and how well it does on rows it never saw."""

    name: str
    layout: str
    seed: int
    steps: int
    n_train: int
    n_holdout: int
    positives: int  # rows labelled 1, training and held out
    held_out_accuracy: float  # probability >= 0.5 taken as label 1


def _stratified_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out), each label split in the same proportion."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels == label))
        k = min(len(rows) - 1, max(1, round(holdout * len(rows))))
        held.append(rows[:k])
        train.append(rows[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def train_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    name: str,
    clip_model: str,
    layout: str = "linear",
    holdout: float = 0.2,
    seed: int = 0,
    *,
    hidden: Sequence[int] = (),
    steps: int = 1000,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
) -> tuple[EmbeddingHead, TrainReport]:
    """Train a probability head on 0/1-labelled embeddings; report its accuracy on a held-out split.

    Deterministic from ``seed`` (split, initial weights, batches): it trains on CPU, where torch is
    bit-reproducible, under a forked RNG so the caller's torch seed state is left alone. The loss
    weighs both labels equally (safety labels are mostly 0; unweighted, "never" would score well).
    Inputs are L2-normalised, as stored embeddings are. The head comes back on the auto device.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (len(x),):
        raise HeadError(
            f"cannot train head {name!r}: need embeddings [rows, width] and one label per row, "
            f"given {list(x.shape)} and {list(y.shape)}"
        )
    other = np.unique(y[~np.isin(y, (0, 1))])
    if len(other):
        raise HeadError(f"cannot train head {name!r}: labels must be 0 or 1, found {other[:5].tolist()}")
    if not 0 < holdout < 1:
        raise HeadError(f"cannot train head {name!r}: holdout must be a fraction in (0, 1), got {holdout}")
    y = y.astype(np.float32)
    positives = int(y.sum())
    counts = {0: len(y) - positives, 1: positives}
    if 0 in counts.values():
        only = 1 if positives else 0
        raise HeadError(f"cannot train head {name!r}: all {len(y)} labels are {only}; need rows labelled 0 and 1")
    if min(counts.values()) < MIN_ROWS_PER_CLASS:
        raise HeadError(
            f"cannot train head {name!r}: {counts[0]} rows labelled 0 and {counts[1]} labelled 1; "
            f"need at least {MIN_ROWS_PER_CLASS} of each"
        )
    spec = HeadSpec(name, layout, x.shape[1], clip_model, "probability", True, tuple(hidden))
    train_rows, held_rows = _stratified_split(y, holdout, seed)
    x_train, y_train = torch.from_numpy(x[train_rows]), torch.from_numpy(y[train_rows])
    n_pos = float(y_train.sum())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y_train) - n_pos) / n_pos))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights and dropout
        head = EmbeddingHead(spec)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
        head.train()
        for _ in range(steps):
            batch = torch.randint(len(x_train), (min(batch_size, len(x_train)),), generator=generator)
            loss = loss_fn(head.logits(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        head.eval()

    predicted = head.score(x[held_rows]) >= 0.5
    report = TrainReport(
        name=name,
        layout=layout,
        seed=seed,
        steps=steps,
        n_train=len(train_rows),
        n_holdout=len(held_rows),
        positives=positives,
        held_out_accuracy=float((predicted == y[held_rows].astype(bool)).mean()),
    )
    return head.to(resolve_device("auto")), report
