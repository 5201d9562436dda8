"""Uploaded checkpoints (`POST /api/v1/checkpoints`) and the `init_from` of a job spec.

An upload is streamed to a temp file with the upload size limit, checked to be a safetensors
file written by this service (its `celif` metadata holds a spec that validates and a step), then
stored under `uploads/<id>.safetensors` (jobstore.artifacts) and recorded with its sha256 in one
transaction. A refused upload leaves no file and no row.

`init_from` is resolved at submission: the source (a job of the same user and one of its
checkpoints, or an upload of the same user) must exist and have the new spec's model section;
it is copied to the new job's `jobstore.files.INIT_FILE` key (server-side on an object store),
so the source's retention or deletion cannot take it away from a queued job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from safetensors import SafetensorError, safe_open
from sqlalchemy.orm import Session

from celif_core.spec import JobSpec, SpecError, validate_spec
from jobstore.artifacts import artifact_store
from jobstore.db.models import UploadedCheckpoint, User, new_id
from jobstore.files import InitSource, staging_dir, upload_key
from jobstore.settings import Settings
from service.errors import NotFound, Unprocessable
from service.jobs import service as jobs
from service.uploads import staged_upload

METADATA_KEY = "celif"  # celif_core.checkpoint.METADATA_KEY (that module imports torch)


def _inspect(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata (spec validated), or Unprocessable naming `file`."""

    def refuse(why: str) -> Unprocessable:
        return Unprocessable(
            f"not a checkpoint written by this service: {why}", loc=("body", "file")
        )

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            names = list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise refuse(f"not a safetensors file ({exc})") from None
    if raw is None:
        raise refuse(f"no {METADATA_KEY!r} metadata")
    try:
        meta = json.loads(raw)
        spec = validate_spec(meta["spec"])
        step = int(meta["step"])
    except SpecError as exc:
        raise refuse(f"its spec does not validate ({exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise refuse(f"metadata without a spec and step ({exc})") from None
    if not any(n.startswith("model.") for n in names):
        raise refuse("no model weights")
    return {"spec": spec.to_dict(), "step": step}


def create_upload(
    session: Session, user: User, settings: Settings, *, upload: BinaryIO, name: str
) -> UploadedCheckpoint:
    ckpt_id = new_id()
    key = upload_key(ckpt_id)
    store = artifact_store(settings)
    with staged_upload(upload, staging_dir(store, key), settings.max_upload_bytes) as staged:
        facts = _inspect(staged.path)
        row = UploadedCheckpoint(
            id=ckpt_id,
            owner_id=user.id,
            name=name[:200],
            path=key,
            size=staged.size,
            sha256=staged.sha256,
            step=facts["step"],
            spec=facts["spec"],
        )
        session.add(row)
        staged.store(session, store, key)
    return row


def get_owned_upload(session: Session, user: User, ckpt_id: str) -> UploadedCheckpoint:
    row = session.get(UploadedCheckpoint, ckpt_id)
    if row is None or row.owner_id != user.id:
        raise NotFound(f"no uploaded checkpoint with id {ckpt_id!r}")
    return row


def resolve_init_from(
    session: Session, user: User, settings: Settings, spec: JobSpec
) -> InitSource | None:
    """The stored `spec.init_from` source (None without one), after checking that
    the user owns the source, that it is stored, and that its model section is the spec's.
    Unknown or foreign sources are 422 naming `init_from` with a "not found" message (as a 404
    would say)."""
    src = spec.init_from
    if src is None:
        return None
    where = ("init_from", "job") if src.job is not None else ("init_from", "upload")
    try:
        if src.job is not None:
            job = jobs.get_owned_job(session, user, src.job)
            ckpt = jobs.checkpoint_row(session, job, src.checkpoint)
            source, what = InitSource(ckpt.path, ckpt.sha256), f"checkpoint {ckpt.id}"
            source_spec = job.spec
        else:
            row = get_owned_upload(session, user, src.upload)
            source, what = InitSource(row.path, row.sha256), f"uploaded checkpoint {row.id}"
            source_spec = row.spec
        if not artifact_store(settings).exists(source.key):
            raise NotFound(f"{what} is registered but its file is missing")
    except NotFound as exc:
        raise Unprocessable(f"not found: {exc}", loc=("body", *where)) from None
    theirs = validate_spec(source_spec).model
    if theirs != spec.model:
        ours = spec.model.model_dump(mode="json")
        other = theirs.model_dump(mode="json")
        diff = [k for k in ours if ours[k] != other.get(k)]
        raise Unprocessable(
            f"the model section must match the source checkpoint's; it differs in "
            f"{', '.join('model.' + k for k in diff)} (source: "
            f"{ {k: other.get(k) for k in diff} })",
            loc=("body", "init_from"),
        )
    return source
