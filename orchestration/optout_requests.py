"""Opt-out requests end to end: the inbox, submitting a request, and applying one.

Applying runs in this order so that a run that dies halfway can simply be run again: validate
(nothing written yet) → match → record the matched uids → extend the removal blocklist → delete
from every sample table and purge its history → remove from the kNN indexes → rewrite the release
shards that held them → mark the request applied → delete the request file (it names the URL).
A malformed request is moved to ``<inbox>/../rejected/`` with a ``.reason.txt`` beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from pathlib import Path

from infra.config import PairlakeConfig
from infra.delta_store import Lake, Lineage
from infra.tables import CURATED, OPTOUT_REQUESTS
from spark_jobs import optout, release

log = logging.getLogger(__name__)


def inbox_dir(config: PairlakeConfig) -> Path:
    inbox = Path(config.optout.inbox)
    return inbox if inbox.is_absolute() else Path(config.lake.root) / inbox


def rejected_dir(config: PairlakeConfig) -> Path:
    return inbox_dir(config).parent / "rejected"


def pending_requests(config: PairlakeConfig) -> list[Path]:
    """Request files waiting in the inbox, oldest name first."""
    inbox = inbox_dir(config)
    return sorted(p for p in inbox.glob("*.json") if p.is_file()) if inbox.exists() else []


def submit_request(config: PairlakeConfig, data: dict, image: Path | None = None) -> Path:
    """Validate a request and write it into the inbox (with a copy of its example image)."""
    inbox = inbox_dir(config)
    request_id = data.get("request_id") or f"req-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    data = {**data, "request_id": request_id}
    staging = inbox / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    if image is not None:
        data["image"] = f"{request_id}{image.suffix.lower() or '.img'}"
        shutil.copyfile(image, staging / data["image"])
    try:
        optout.validate(data, request_id, staging)
    except optout.RequestError:
        if image is not None:
            (staging / data["image"]).unlink(missing_ok=True)
        raise
    if (inbox / f"{request_id}.json").exists():
        raise optout.RequestError(f"request {request_id} is already in the inbox")
    if image is not None:
        (staging / data["image"]).replace(inbox / data["image"])
    # Written aside and renamed: the sensor never sees half a request.
    tmp = staging / f"{request_id}.json"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(inbox / f"{request_id}.json")
    return inbox / f"{request_id}.json"


def _reject(config: PairlakeConfig, path: Path, reason: str) -> None:
    """Move the request (and its example image, if it names one in the inbox) aside."""
    aside = rejected_dir(config)
    aside.mkdir(parents=True, exist_ok=True)
    try:
        image = json.loads(path.read_text(encoding="utf-8")).get("image")
    except (ValueError, AttributeError):
        image = None
    if isinstance(image, str) and Path(image).name == image and (path.parent / image).is_file():
        (path.parent / image).replace(aside / image)
    path.replace(aside / path.name)
    (aside / f"{path.name}.reason.txt").write_text(reason + "\n")


def _similar_images(config: PairlakeConfig, lake: Lake, request: optout.OptOutRequest) -> dict[str, float]:
    """uid -> cosine of the stored images like the example; RequestError if the example is one the
    downloader would refuse (too small, too elongated...)."""
    from gpu_jobs.clip_model import load_clip, model_identity
    from gpu_jobs.retrieval import embed_as_stored, similar_stored_images
    from spark_jobs.download.resizer import ImageRejected

    threshold = request.min_similarity or config.optout.min_similarity
    try:
        vector = embed_as_stored(load_clip(config.clip), request.image_bytes, config.download)
    except ImageRejected as exc:
        raise optout.RequestError(f"the example image cannot be used: {exc}") from None
    return similar_stored_images(lake, vector, model_identity(config.clip), threshold)


def apply_request_file(config: PairlakeConfig, path: Path, lineage: Lineage) -> optout.RemovalOutcome:
    """Apply (or reject) one request file of the inbox; see the module docstring for the order."""
    from gpu_jobs.retrieval import remove_from_indexes

    lake = Lake(config.lake.root)
    received = dt.datetime.now(dt.timezone.utc)
    try:
        request = optout.parse_request_file(path)
        similar = _similar_images(config, lake, request) if request.kind == "image" else None
    except optout.RequestError as exc:
        outcome = optout.RemovalOutcome(path.stem, "rejected", rejection=str(exc))
        _reject(config, path, str(exc))
        optout.record_request(lake, None, path.stem, path.name, outcome, received, lineage)
        return outcome
    outcome = optout.RemovalOutcome(request.request_id, "received")
    optout.record_request(lake, request, request.request_id, path.name, outcome, received, lineage)
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        outcome.seconds[name] = round(now - clock, 3)
        clock = now

    found = optout.find_matches(lake, request, similar)
    for uid, how in optout.recorded_uids(lake, request.request_id).items():
        found.uids.setdefault(uid, how)
    phase("match")
    optout.record_removals(lake, request, found, lineage)
    optout.extend_removal_blocklist(lake, request, found, lineage)
    phase("record")
    if found.uids:
        outcome.purges = optout.purge_tables(lake, found, lineage)
        phase("purge_tables")
        outcome.index_vectors_removed = remove_from_indexes(lake, set(found.uids), lake.version(CURATED))
        phase("index")
        outcome.shards_rewritten = release.withdraw(lake, set(found.uids), lineage)
        phase("shards")
    outcome.status = "applied"
    outcome.matched = len(found.uids)
    outcome.rows_deleted = {p.table: p.rows_deleted for p in outcome.purges if p.rows_deleted}
    optout.record_request(lake, request, request.request_id, path.name, outcome, received, lineage)
    if request.kind == "image":
        (path.parent / json.loads(path.read_text())["image"]).unlink(missing_ok=True)
    path.unlink()
    phase("audit")
    log.info("request %s: %d uids removed, %s", request.request_id, outcome.matched, outcome.rows_deleted)
    return outcome


def request_status(config: PairlakeConfig, request_id: str | None = None) -> list[dict]:
    """Audit rows of every request (or one), newest first."""
    rows = Lake(config.lake.root).read(OPTOUT_REQUESTS).to_pylist()
    if request_id is not None:
        rows = [r for r in rows if r["request_id"] == request_id]
    return sorted(rows, key=lambda r: r["received_at"], reverse=True)
