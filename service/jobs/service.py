"""Rules of the jobs domain: validation, ownership, idempotency, cancellation, pagination.

Routes call these and only translate HTTP; queries live in `repository`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from celif_core.spec import JobSpec, estimate, validate_spec
from jobstore import checkpoints as checkpoint_repo
from jobstore import jobs as repo
from jobstore import states, workers
from jobstore.artifacts import CorruptArtifact, MissingArtifact, artifact_store
from jobstore.datasets import owned_dataset_facts
from jobstore.db.models import TERMINAL_STATES, Checkpoint, Job, JobEvent, User
from jobstore.db.session import after_commit, after_rollback
from jobstore.files import InitSource, install_init_file, remove_init_file
from jobstore.queue import try_enqueue_job
from jobstore.settings import Settings
from jobstore.workers import Census
from service.errors import BadRequest, Conflict, NotFound, Unprocessable
from service.security import NUL_MESSAGE, find_nul

MAX_PAGE = 200
MAX_IDEMPOTENCY_KEY = 200


# ----------------------------------------------------------------------------- ownership
def get_owned_job(session: Session, user: User, job_id: str, *, for_update: bool = False) -> Job:
    """The job if `user` owns it; 404 otherwise (another user's job is indistinguishable from a
    missing one)."""
    job = repo.get_job(session, job_id, for_update=for_update)
    if job is None or job.owner_id != user.id:
        raise NotFound(f"no job with id {job_id!r}")
    return job


# ----------------------------------------------------------------------------- validation
def validate_job_spec(session: Session, user: User, body: Any, settings: Settings) -> JobSpec:
    """Raises `SpecError` (-> 422 naming the field). Datasets resolve among the user's own.
    A body naming a `recipe` is that recipe's spec with the body's sections merged over it."""
    where = find_nul(body)
    if where is not None:  # the spec is stored as JSON, which PostgreSQL refuses with a NUL
        raise Unprocessable(f"text in a job spec {NUL_MESSAGE}", loc=("body", *where))
    if isinstance(body, dict) and body.get("recipe") is not None:  # a stored spec has null
        from celif_core.recipes import apply_recipe

        body = apply_recipe(body)
    return validate_spec(
        body,
        datasets=lambda dataset_id: owned_dataset_facts(session, user.id, dataset_id),
        limits=settings.spec_limits,
    )


def _init_source(
    session: Session, user: User, settings: Settings, spec: JobSpec
) -> InitSource | None:
    from service.checkpoints.service import resolve_init_from  # (it imports this module)

    return resolve_init_from(session, user, settings, spec)


def dry_run(session: Session, user: User, body: Any, settings: Settings) -> dict[str, Any]:
    spec = validate_job_spec(session, user, body, settings)
    _init_source(session, user, settings, spec)
    return {"valid": True, "spec": spec.to_dict(), "estimate": estimate(spec)}


# ----------------------------------------------------------------------------- submit
@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False: an Idempotency-Key replay returned the existing job


def submit_job(
    session: Session,
    user: User,
    body: Any,
    settings: Settings,
    *,
    idempotency_key: str | None = None,
) -> Submitted:
    """Validate and store as `queued`; the job is enqueued after the unit of work commits.

    With an `Idempotency-Key`, a replay (same user, same key) returns the stored job and queues
    nothing; concurrent replays race on the (owner, key) unique constraint and all but one
    return the winner's job. Reusing a key for a different spec is a 409.
    """
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    spec = validate_job_spec(session, user, body, settings)
    init_source = _init_source(session, user, settings, spec)
    spec_dict = spec.to_dict()
    if idempotency_key is not None:
        existing = repo.get_job_by_idempotency_key(session, user.id, idempotency_key)
        if existing is not None:
            return Submitted(_check_replay(existing, spec_dict), created=False)

    try:
        job = store_job(
            session, user, settings, spec, init_source, idempotency_key=idempotency_key
        )  # flushes: a concurrent replay's key collides here
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = repo.get_job_by_idempotency_key(session, user.id, idempotency_key)
        if existing is None:
            raise
        return Submitted(_check_replay(existing, spec_dict), created=False)
    return Submitted(job, created=True)


def store_job(
    session: Session,
    user: User,
    settings: Settings,
    spec: JobSpec,
    init_source: InitSource | None,
    *,
    status: str = "queued",
    **fields: Any,
) -> Job:
    """Store a validated spec as a new job (`queued`, or `waiting` for a study's trial held
    back) with its status event; a queued job's message is sent after the commit. `fields`:
    more columns (idempotency key, study link)."""
    job = Job(
        owner_id=user.id,
        name=spec.name,
        task_name=spec.task.name,
        neuron=spec.model.neuron,
        spec=spec.to_dict(),
        status=status,
        max_steps=spec.total_steps,
        step=0,
        **fields,
    )
    repo.add_job(session, job)
    states.record_status(session, job)
    if init_source is not None:
        store = artifact_store(settings)
        install_init_file(store, job.id, init_source)
        after_rollback(session, lambda: remove_init_file(store, job.id))
    if status == "queued":
        # The message is sent once the request's unit of work has committed the row (a worker
        # always finds it); if the broker is down the reaper re-sends it.
        after_commit(session, lambda: try_enqueue_job(job.id, settings))
    return job


def _check_replay(existing: Job, spec_dict: dict[str, Any]) -> Job:
    if existing.spec != spec_dict:
        raise Conflict(
            f"Idempotency-Key already used for job {existing.id} with a different spec; "
            "use a new key for a new job"
        )
    return existing


# ----------------------------------------------------------------------------- list
def queue_census(session: Session, settings: Settings, jobs: list[Job]) -> Census | None:
    """The worker registry, read only when one of `jobs` is queued (what `waiting_for` needs)."""
    if not any(job.status == "queued" for job in jobs):
        return None
    return workers.census(session, settings.worker_offline_after_s)


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        if not isinstance(job_id, str) or "\x00" in job_id:
            raise ValueError("not a job id")
        return datetime.fromisoformat(created_at), job_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadRequest("invalid cursor: pass back a `next_cursor` value unchanged") from exc


def list_jobs(
    session: Session,
    user: User,
    *,
    statuses: list[str],
    tasks: list[str],
    neurons: list[str],
    cursor: str | None,
    limit: int,
) -> tuple[list[Job], str | None]:
    limit = max(1, min(limit, MAX_PAGE))
    before = decode_cursor(cursor) if cursor else None
    rows = repo.list_jobs(
        session,
        user.id,
        statuses=_split(statuses),
        tasks=_split(tasks),
        neurons=_split(neurons),
        before=before,
        limit=limit + 1,
    )
    page, more = rows[:limit], len(rows) > limit
    return page, (encode_cursor(page[-1]) if more and page else None)


def _split(values: list[str]) -> list[str]:
    """`?status=a&status=b` and `?status=a,b` both mean a or b."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


# ----------------------------------------------------------------------------- cancel
def cancel_job(session: Session, user: User, job_id: str) -> Job:
    """A queued job is cancelled at once; a running job gets `cancel_requested` and its worker
    ends it as `cancelled` within one training step. A finished job is a 409."""
    job = get_owned_job(session, user, job_id, for_update=True)
    if job.status in TERMINAL_STATES:
        raise Conflict(f"job {job.id} already finished as {job.status}")
    stop_job(session, job)
    return job


def stop_job(session: Session, job: Job) -> None:
    """Cancel an unfinished job: at once when it is not running, else by `cancel_requested`."""
    if job.status in ("queued", "waiting"):
        states.transition(
            session,
            job.id,
            "cancelled",
            event={"reason": "cancelled by user"},
            cancel_requested=True,
        )
    elif job.status == "running":  # its worker sees the flag within a step and cancels it
        job.cancel_requested = True
        job.stop_reason = job.stop_reason or "cancel"
    session.flush()


# ----------------------------------------------------------------------------- metrics/events
def list_metrics(
    session: Session, user: User, job_id: str, *, after: int, limit: int
) -> tuple[list[JobEvent], bool]:
    job = get_owned_job(session, user, job_id)
    limit = max(1, min(limit, 10_000))
    rows = repo.list_events(session, job.id, after=after, kinds=("metric",), limit=limit + 1)
    return rows[:limit], len(rows) > limit


# ----------------------------------------------------------------------------- checkpoints
def list_checkpoints(session: Session, user: User, job_id: str) -> list[Checkpoint]:
    job = get_owned_job(session, user, job_id)
    return checkpoint_repo.list_checkpoints(session, job.id)


def checkpoint_row(session: Session, job: Job, ref: str) -> Checkpoint:
    """The checkpoint row `ref` names ("latest", "best" or an id); 404 when there is none.

    "best" falls back to "latest" when no checkpoint is flagged best (e.g. a job without a
    validation metric yet)."""
    ckpt = None if "\x00" in ref else checkpoint_repo.get_checkpoint(session, job.id, ref)
    if ckpt is None and ref == "best":
        ckpt = checkpoint_repo.get_checkpoint(session, job.id, "latest")
    if ckpt is None:
        raise NotFound(f"job {job.id} has no checkpoint {ref!r}")
    return ckpt


def resolve_checkpoint(
    session: Session, job: Job, ref: str, *, settings: Settings
) -> tuple[Checkpoint, Path]:
    """The checkpoint row `ref` names and a local file with its bytes, sha256 checked (the
    file itself on the local backend; the API's cache entry on an object store). 404 when
    there is none or its file is gone, 409 when its bytes do not match; an unreachable store
    is a 503 (service/errors.py)."""
    ckpt = checkpoint_row(session, job, ref)
    return ckpt, fetch_artifact(settings, ckpt.path, ckpt.sha256, f"checkpoint {ckpt.id}")


def fetch_artifact(settings: Settings, key: str, sha256: str | None, what: str) -> Path:
    """`artifact_store(settings).fetch` with its errors as the API's."""
    try:
        return artifact_store(settings).fetch(key, sha256)
    except MissingArtifact:
        raise NotFound(f"{what} is registered but its file is missing") from None
    except CorruptArtifact:
        raise Conflict(f"{what} is stored with bytes that do not match its sha256") from None


@dataclass(frozen=True)
class Download:
    """How to answer a checkpoint download: a local file, a redirect, or streamed bytes."""

    checkpoint: Checkpoint
    path: Path | None = None
    url: str | None = None
    chunks: Iterator[bytes] | None = None


def checkpoint_download(session: Session, job: Job, ref: str, settings: Settings) -> Download:
    """The local backend serves the file (sha256 checked first); an object store streams the
    object (checked as it streams: a mismatch cuts the response short) or, with
    `download_redirect`, hands out a presigned URL."""
    ckpt = checkpoint_row(session, job, ref)
    if settings.artifact_store == "local":
        return Download(
            ckpt, path=fetch_artifact(settings, ckpt.path, ckpt.sha256, f"checkpoint {ckpt.id}")
        )
    store = artifact_store(settings)
    if settings.download_redirect:
        url = store.presigned_url(ckpt.path, settings.presigned_url_ttl_s)
        if url is not None:
            return Download(ckpt, url=url)
    try:
        return Download(ckpt, chunks=store.stream(ckpt.path, ckpt.sha256))
    except MissingArtifact:
        raise NotFound(f"checkpoint {ckpt.id} is registered but its file is missing") from None


def curves_image(session: Session, user: User, job_id: str, fmt: str) -> bytes:
    """The job's learning curves (one panel per metric, one line per split) as PNG or SVG."""
    from service.jobs.curves import render_curves

    job = get_owned_job(session, user, job_id)
    events = repo.list_events(session, job.id, kinds=("metric",), limit=1_000_000)
    title = f"{job.name or job.id} ({job.task_name}, {job.neuron}) - {job.status}"
    return render_curves(title, events, fmt)
