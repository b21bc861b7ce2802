"""Opt-out requests end to end: the inbox, submitting a request, previewing, holding and applying one.

Applying runs in this order so that a run that dies halfway can simply be run again: validate
(nothing written yet) → match → hold for confirmation if over-broad → record the matched uids →
extend the removal blocklist → delete from every sample table and purge its history → remove from
the kNN indexes → rewrite the release shards that held them → mark the request applied → delete
the request file (it names the URL). One removal runs at a time per lake (the ``removal`` lease).
A malformed request is moved to ``<inbox>/../rejected/`` with a ``.reason.txt`` beside it; an
over-broad one (see ``optout.hold_reason``) to ``<inbox>/../held/`` until ``pairlake optout confirm``.
These folders are the lake's (``infra.lake_storage.Folder``: a local folder or a prefix in a bucket):
a request file is published whole after its example image, and moving one aside is a share then a
delete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from infra import lake_layout
from infra.config import ConfigError, PairlakeConfig
from infra.delta_store import Lake, Lineage
from infra.lake_lease import lease
from infra.lake_storage import Folder
from infra.tables import CURATED
from spark_jobs import optout, release

log = logging.getLogger(__name__)


def _optout_folder(config: PairlakeConfig, key: str) -> Folder:
    """A folder of the opt-out layout on the lake's filesystem. An absolute inbox is a local folder
    outside the lake: beside a lake in a bucket it would name no place, so it is refused."""
    lake = Lake.of(config.lake)
    if key.startswith("/") and not lake.is_local:
        raise ConfigError(f"config optout.inbox {config.optout.inbox!r} is a local path, but the lake is in a bucket "
                          f"({lake.root}): name a key under the lake root, e.g. 'optout/inbox'")
    return lake.folder(key)


def inbox_dir(config: PairlakeConfig) -> Folder:
    return _optout_folder(config, lake_layout.optout_inbox(config.optout.inbox))


def rejected_dir(config: PairlakeConfig) -> Folder:
    return _optout_folder(config, lake_layout.optout_beside_inbox(config.optout.inbox, "rejected"))


def held_dir(config: PairlakeConfig) -> Folder:
    """Requests waiting for a person's confirmation (over-broad); the sensor never looks here."""
    return _optout_folder(config, lake_layout.optout_beside_inbox(config.optout.inbox, "held"))


def removal_lease(config: PairlakeConfig, purpose: str):
    """The lake's removal lease: one removal at a time, the next waits up to optout.lock_wait_s."""
    return lease(Lake.of(config.lake), "removal", purpose, config.optout.lock_wait_s)


def _id_in_use(config: PairlakeConfig, request_id: str) -> str | None:
    """Where a request id is already used (a folder, or the audit with its status), or None."""
    for folder in (inbox_dir(config), held_dir(config), rejected_dir(config)):
        if folder.exists(f"{request_id}.json"):
            return f"a request file in {folder.path}"
    status = optout.latest_status(Lake.of(config.lake), request_id)
    return f"the audit ({status})" if status else None


@dataclass(frozen=True)
class PendingRequest:
    name: str  # the request file's name in the inbox
    version: str  # a short sha256 of its bytes: other bytes under the same name are another request


def pending_requests(config: PairlakeConfig) -> list[PendingRequest]:
    """Request files waiting in the inbox, oldest name first, with the version of their bytes."""
    inbox = inbox_dir(config)
    pending = []
    for name in inbox.names("*.json"):
        if name.startswith("."):
            continue
        try:
            # Capped like parsing: an oversized file is versioned by its first bytes (its run rejects it).
            content = optout.read_request(inbox, name)
        except FileNotFoundError:
            continue  # applied and deleted by a run since the listing
        pending.append(PendingRequest(name, hashlib.sha256(content).hexdigest()[:16]))
    return pending


def submit_request(config: PairlakeConfig, data: dict, image: Path | None = None) -> str:
    """Validate a request and write it into the inbox (with a copy of its example image, a local
    file); returns the request file's name."""
    inbox = inbox_dir(config)
    # The id names files: it is checked before any file is touched, and a used id is refused.
    request_id = optout.check_request_id(
        data.get("request_id") or f"req-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}")
    used = _id_in_use(config, request_id)
    if used:
        raise optout.RequestError(f"request id {request_id} is already used ({used}); choose another id")
    data = {**data, "request_id": request_id}
    if image is None:
        optout.validate(data, request_id)
    else:
        if not image.is_file():
            raise optout.RequestError(f"--image {image} is not a file")
        if image.stat().st_size > optout.MAX_EXAMPLE_IMAGE_BYTES:
            raise optout.RequestError(f"--image {image} is larger than {optout.MAX_EXAMPLE_IMAGE_BYTES:,} bytes")
        # Validated where it lies, so that nothing reaches the inbox before the request is known good.
        optout.validate({**data, "image": image.name}, request_id, Folder.local(image.parent))
        data["image"] = f"{request_id}{image.suffix.lower() or '.img'}"
        inbox.write_bytes(data["image"], image.read_bytes())
    name = f"{request_id}.json"
    # Published whole and after its example: the sensor never sees half a request.
    inbox.write_bytes(name, json.dumps(data, indent=2, sort_keys=True).encode())
    return name


def _example_named(folder: Folder, name: str) -> str | None:
    """The example image a request file names beside it, if any (a malformed file names none)."""
    try:
        image = json.loads(optout.read_request(folder, name)).get("image")
    except (ValueError, AttributeError, RecursionError):
        return None
    return image if optout.is_plain_name(image) and folder.exists(image) else None


def _move(folder: Folder, name: str, into: Folder, as_name: str | None = None) -> None:
    """Share the file into the other folder, then delete it here (no rename spans a bucket's keys);
    a file of that name already there (the same name rejected before) is replaced."""
    into.delete(as_name or name)
    folder.share(name, into, as_name)
    folder.delete(name)


def _move_aside(folder: Folder, name: str, aside: Folder, as_name: str | None = None) -> None:
    """Move the request (and its example image, if it names one beside it) into ``aside``."""
    image = _example_named(folder, name)
    if image:
        _move(folder, image, aside)
    _move(folder, name, aside, as_name)


def _reject(config: PairlakeConfig, folder: Folder, name: str, reason: str) -> None:
    rejected = rejected_dir(config)
    _move_aside(folder, name, rejected)
    rejected.write_bytes(f"{name}.reason.txt", (reason + "\n").encode())


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


def request_folder(config: PairlakeConfig, name: str, confirm: bool = False) -> Folder:
    """The folder of request file ``name``: the inbox (or, to confirm, the held requests); only a
    plain file name is accepted, so a run can never touch a file outside the lake's layout."""
    if not optout.is_plain_name(name) or not name.endswith(".json"):
        raise optout.RequestError(f"{name[:120]!r} is not the name of a request file (NAME.json)")
    return held_dir(config) if confirm else inbox_dir(config)


def apply_request_file(config: PairlakeConfig, folder: Folder, name: str, lineage: Lineage,
                       confirmed_by: str | None = None) -> optout.RemovalOutcome:
    """Apply (or reject, or hold) the request file ``name`` in ``folder``; see the module docstring
    for the order. ``confirmed_by``: a person confirmed this held request, so the breadth guards do
    not hold it."""
    with removal_lease(config, f"opt-out request {Path(name).stem} (run {lineage.run_id})"):
        return _apply(config, folder, name, lineage, confirmed_by)


def _apply(config: PairlakeConfig, folder: Folder, name: str, lineage: Lineage,
           confirmed_by: str | None) -> optout.RemovalOutcome:
    from gpu_jobs.retrieval import remove_from_indexes

    lake = Lake.of(config.lake)
    received = dt.datetime.now(dt.timezone.utc)
    try:
        request = optout.parse_request_file(folder, name)
        status = optout.latest_status(lake, request.request_id)
        if status in ("applied", "rejected") or (status == "needs_confirmation" and not confirmed_by):
            raise optout.RequestError(f"request id {request.request_id} is already used ({status}); "
                                      "submit it again under a new id")
        similar = _similar_images(config, lake, request) if request.kind == "image" else None
    except optout.RequestError as exc:
        # The audit is append-only: a rejected file whose id is taken is recorded under its own id.
        stem = Path(name).stem
        audit_id = stem if optout.latest_status(lake, stem) is None else f"{stem}~{uuid.uuid4().hex[:8]}"
        outcome = optout.RemovalOutcome(audit_id, "rejected", rejection=str(exc))
        _reject(config, folder, name, str(exc))
        optout.record_request(lake, None, audit_id, name, outcome, received, lineage)
        return outcome
    outcome = optout.RemovalOutcome(request.request_id, "received")
    clock = time.perf_counter()

    def phase(phase_name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        outcome.seconds[phase_name] = round(now - clock, 3)
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
        _move_aside(folder, name, held_dir(config), f"{request.request_id}.json")
        optout.record_request(lake, request, request.request_id, name, outcome, received, lineage, outcome.preview)
        log.warning("request %s held for confirmation: %s", request.request_id, hold)
        return outcome
    optout.record_request(lake, request, request.request_id, name, outcome, received, lineage, outcome.preview,
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
    optout.record_request(lake, request, request.request_id, name, outcome, received, lineage, outcome.preview,
                          confirmed_by)
    image = _example_named(folder, name)
    if image:
        folder.delete(image)
    folder.delete(name)
    phase("audit")
    log.info("request %s: %d uids removed, %s", request.request_id, outcome.matched, outcome.rows_deleted)
    return outcome


def preview_request(config: PairlakeConfig, request_id: str) -> dict:
    """What the request would remove (a pending or held file), or what it did remove (the audit)."""
    lake = Lake.of(config.lake)
    optout.check_request_id(request_id)
    history = optout.request_rows(lake).get(request_id, [])
    for folder in (inbox_dir(config), held_dir(config)):
        if folder.exists(f"{request_id}.json"):
            request = optout.parse_request_file(folder, f"{request_id}.json")
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
