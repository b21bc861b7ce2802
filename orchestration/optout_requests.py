"""Opt-out requests end to end: the inbox, submitting a request, previewing, holding and applying one.

Applying runs in this order so that a run that dies halfway can simply be run again: validate
(nothing written yet) → match → hold for confirmation if over-broad → record the matched uids →
extend the removal blocklist → delete from every sample table and purge its history → remove from
the kNN indexes → rewrite the release shards that held them → mark the request applied → delete
the request file (it names the URL). One removal runs at a time per lake (the ``removal`` lease).
A malformed request is moved to ``<inbox>/../rejected/`` with a ``.reason.txt`` beside it; an
over-broad one (see ``optout.hold_reason``) to ``<inbox>/../held/`` until ``pairlake optout confirm``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from pathlib import Path

from infra import lake_layout
from infra.config import PairlakeConfig
from infra.delta_store import Lake, Lineage
from infra.lake_lease import lease
from infra.lake_storage import atomic_output
from infra.tables import CURATED
from spark_jobs import optout, release

log = logging.getLogger(__name__)


def inbox_dir(config: PairlakeConfig) -> Path:
    return Lake.of(config.lake).path(lake_layout.optout_inbox(config.optout.inbox))


def rejected_dir(config: PairlakeConfig) -> Path:
    return Lake.of(config.lake).path(lake_layout.optout_beside_inbox(config.optout.inbox, "rejected"))


def held_dir(config: PairlakeConfig) -> Path:
    """Requests waiting for a person's confirmation (over-broad); the sensor never looks here."""
    return Lake.of(config.lake).path(lake_layout.optout_beside_inbox(config.optout.inbox, "held"))


def removal_lease(config: PairlakeConfig, purpose: str):
    """The lake's removal lease: one removal at a time, the next waits up to optout.lock_wait_s."""
    return lease(Lake.of(config.lake), "removal", purpose, config.optout.lock_wait_s)


def _id_in_use(config: PairlakeConfig, request_id: str) -> str | None:
    """Where a request id is already used (a folder, or the audit with its status), or None."""
    for folder in (inbox_dir(config), held_dir(config), rejected_dir(config)):
        if (folder / f"{request_id}.json").exists():
            return f"a request file in {folder}"
    status = optout.latest_status(Lake.of(config.lake), request_id)
    return f"the audit ({status})" if status else None


def pending_requests(config: PairlakeConfig) -> list[Path]:
    """Request files waiting in the inbox, oldest name first."""
    inbox = inbox_dir(config)
    return sorted(p for p in inbox.glob("*.json") if p.is_file() and not p.name.startswith(".")) if inbox.exists() else []


def submit_request(config: PairlakeConfig, data: dict, image: Path | None = None) -> Path:
    """Validate a request and write it into the inbox (with a copy of its example image)."""
    inbox = inbox_dir(config)
    # The id names files: it is checked before any file is touched, and a used id is refused.
    request_id = optout.check_request_id(
        data.get("request_id") or f"req-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}")
    used = _id_in_use(config, request_id)
    if used:
        raise optout.RequestError(f"request id {request_id} is already used ({used}); choose another id")
    if image is not None:
        if not image.is_file():
            raise optout.RequestError(f"--image {image} is not a file")
        if image.stat().st_size > optout.MAX_EXAMPLE_IMAGE_BYTES:
            raise optout.RequestError(f"--image {image} is larger than {optout.MAX_EXAMPLE_IMAGE_BYTES:,} bytes")
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
    if image is not None:
        (staging / data["image"]).replace(inbox / data["image"])
    with atomic_output(inbox / f"{request_id}.json") as fh:  # the sensor never sees half a request
        fh.write(json.dumps(data, indent=2, sort_keys=True).encode())
    return inbox / f"{request_id}.json"


def _move_aside(path: Path, aside: Path, name: str | None = None) -> Path:
    """Move the request (and its example image, if it names one beside it) into ``aside``."""
    aside.mkdir(parents=True, exist_ok=True)
    image = None
    if path.stat().st_size <= optout.MAX_REQUEST_BYTES:
        try:
            image = json.loads(path.read_bytes().decode("utf-8")).get("image")
        except (ValueError, AttributeError, RecursionError):
            pass
    if isinstance(image, str) and Path(image).name == image and (path.parent / image).is_file():
        (path.parent / image).replace(aside / image)
    target = aside / (name or path.name)
    path.replace(target)
    return target


def _reject(config: PairlakeConfig, path: Path, reason: str) -> None:
    target = _move_aside(path, rejected_dir(config))
    (target.parent / f"{target.name}.reason.txt").write_text(reason + "\n")


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


def request_file(config: PairlakeConfig, name: str, confirm: bool = False) -> Path:
    """The request file ``name`` in the inbox (or, to confirm, among the held requests); only a plain
    file name is accepted, so a run can never touch a file outside the lake's layout."""
    if Path(name).name != name or name.startswith(".") or not name.endswith(".json"):
        raise optout.RequestError(f"{name[:120]!r} is not the name of a request file (NAME.json)")
    return (held_dir(config) if confirm else inbox_dir(config)) / name


def apply_request_file(config: PairlakeConfig, path: Path, lineage: Lineage,
                       confirmed_by: str | None = None) -> optout.RemovalOutcome:
    """Apply (or reject, or hold) one request file; see the module docstring for the order.
    ``confirmed_by``: a person confirmed this held request, so the breadth guards do not hold it."""
    with removal_lease(config, f"opt-out request {path.stem} (run {lineage.run_id})"):
        return _apply(config, path, lineage, confirmed_by)


def _apply(config: PairlakeConfig, path: Path, lineage: Lineage, confirmed_by: str | None) -> optout.RemovalOutcome:
    from gpu_jobs.retrieval import remove_from_indexes

    lake = Lake.of(config.lake)
    received = dt.datetime.now(dt.timezone.utc)
    try:
        request = optout.parse_request_file(path)
        status = optout.latest_status(lake, request.request_id)
        if status in ("applied", "rejected") or (status == "needs_confirmation" and not confirmed_by):
            raise optout.RequestError(f"request id {request.request_id} is already used ({status}); "
                                      "submit it again under a new id")
        similar = _similar_images(config, lake, request) if request.kind == "image" else None
    except optout.RequestError as exc:
        # The audit is append-only: a rejected file whose id is taken is recorded under its own id.
        audit_id = path.stem if optout.latest_status(lake, path.stem) is None else f"{path.stem}~{uuid.uuid4().hex[:8]}"
        outcome = optout.RemovalOutcome(audit_id, "rejected", rejection=str(exc))
        _reject(config, path, str(exc))
        optout.record_request(lake, None, audit_id, path.name, outcome, received, lineage)
        return outcome
    outcome = optout.RemovalOutcome(request.request_id, "received")
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        outcome.seconds[name] = round(now - clock, 3)
        clock = now

    found = optout.find_matches(lake, request, similar)
    for uid, how in optout.recorded_uids(lake, request.request_id).items():
        found.uids.setdefault(uid, how)
    outcome.preview = optout.preview(found)
    phase("match")
    hold = None if confirmed_by else optout.hold_reason(
        request, found, config.optout.max_auto_fraction, config.optout.max_auto_samples)
    if hold:
        outcome.status, outcome.hold_reason, outcome.matched = "needs_confirmation", hold, len(found.uids)
        _move_aside(path, held_dir(config), f"{request.request_id}.json")
        optout.record_request(lake, request, request.request_id, path.name, outcome, received, lineage, outcome.preview)
        log.warning("request %s held for confirmation: %s", request.request_id, hold)
        return outcome
    optout.record_request(lake, request, request.request_id, path.name, outcome, received, lineage, outcome.preview,
                          confirmed_by)
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
    optout.record_request(lake, request, request.request_id, path.name, outcome, received, lineage, outcome.preview,
                          confirmed_by)
    if request.kind == "image":
        (path.parent / json.loads(path.read_text())["image"]).unlink(missing_ok=True)
    path.unlink()
    phase("audit")
    log.info("request %s: %d uids removed, %s", request.request_id, outcome.matched, outcome.rows_deleted)
    return outcome


def preview_request(config: PairlakeConfig, request_id: str) -> dict:
    """What the request would remove (a pending or held file), or what it did remove (the audit)."""
    lake = Lake.of(config.lake)
    optout.check_request_id(request_id)
    history = optout.request_rows(lake).get(request_id, [])
    for folder in (inbox_dir(config), held_dir(config)):
        path = folder / f"{request_id}.json"
        if path.is_file():
            request = optout.parse_request_file(path)
            similar = _similar_images(config, lake, request) if request.kind == "image" else None
            found = optout.find_matches(lake, request, similar)
            return {"request_id": request_id, "status": history[-1]["status"] if history else "pending",
                    "kind": request.kind, "target": request.cleartext_target, **optout.preview(found),
                    "would_hold": optout.hold_reason(request, found, config.optout.max_auto_fraction,
                                                     config.optout.max_auto_samples)}
    if not history:
        raise optout.RequestError(f"no request {request_id} in the inbox, among the held ones or in the audit")
    last = history[-1]
    shown = next((json.loads(r["preview"]) for r in reversed(history) if r["preview"]), {})
    return {"request_id": request_id, "status": last["status"], "kind": last["kind"], "target": last["target"],
            **shown, "hold_reason": next((r["hold_reason"] for r in reversed(history) if r["hold_reason"]), None)}


def request_status(config: PairlakeConfig, request_id: str | None = None) -> list[dict]:
    """The newest audit row of every request (or one), newest first."""
    history = optout.request_rows(Lake.of(config.lake))
    rows = [h[-1] for rid, h in history.items() if request_id is None or rid == request_id]
    return sorted(rows, key=lambda r: r["recorded_at"] or r["received_at"], reverse=True)
