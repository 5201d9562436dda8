"""Uploaded datasets: store (validated, atomically), list, read, and resolve for job specs.

An upload is streamed to a temp file beside its final place (same filesystem), validated with
numpy (`validate.inspect_npz`), then renamed to `<id>.npz` and recorded in one transaction. A
refused upload leaves nothing behind: no file, no row.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.datasets.validate import InvalidDataset, inspect_npz
from service.db.models import Dataset, User, new_id
from service.errors import NotFound, PayloadTooLarge, Unprocessable
from service.security import NUL, NUL_MESSAGE
from service.settings import Settings

CHUNK = 1024 * 1024


def datasets_dir(settings: Settings) -> Path:
    path = Path(settings.datasets_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _copy_limited(src: BinaryIO, dst: BinaryIO, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the upload is over the limit of {limit} bytes (settings.max_upload_bytes)"
            )
        digest.update(chunk)
        dst.write(chunk)
    return size, digest.hexdigest()


def create_dataset(
    session: Session,
    user: User,
    settings: Settings,
    *,
    upload: BinaryIO,
    name: str,
    kind: Literal["auto", "classification", "regression"] = "auto",
) -> Dataset:
    if NUL in name:  # PostgreSQL's text columns cannot hold it
        raise Unprocessable(f"the dataset name {NUL_MESSAGE}", loc=("body", "name"))
    root = datasets_dir(settings)
    tmp = root / f".upload-{uuid.uuid4().hex}.tmp"
    final: Path | None = None
    try:
        with open(tmp, "wb") as fh:
            size, sha256 = _copy_limited(upload, fh, settings.max_upload_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        if size == 0:
            raise Unprocessable("the uploaded file is empty", loc=("body", "file"))
        try:
            facts = inspect_npz(tmp, kind=kind, max_array_bytes=settings.dataset_bytes_limit)
        except InvalidDataset as exc:
            raise Unprocessable(str(exc), loc=("body", "file")) from None
        dataset_id = new_id()
        final = root / f"{dataset_id}.npz"
        row = Dataset(
            id=dataset_id,
            owner_id=user.id,
            name=name,
            path=final.name,
            size=size,
            sha256=sha256,
            num_sequences=facts.num_sequences,
            seq_len=facts.seq_len,
            input_size=facts.input_size,
            output_size=facts.output_size,
            kind=facts.kind,
            target=facts.target,
        )
        session.add(row)
        session.flush()
        os.replace(tmp, final)
        session.commit()
        return row
    except BaseException:
        session.rollback()
        tmp.unlink(missing_ok=True)
        if final is not None:
            final.unlink(missing_ok=True)
        raise


def list_datasets(session: Session, user: User) -> Iterable[Dataset]:
    return session.scalars(
        select(Dataset).where(Dataset.owner_id == user.id).order_by(Dataset.created_at.desc())
    ).all()


def get_owned_dataset(session: Session, user: User, dataset_id: str) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.owner_id != user.id:
        raise NotFound(f"no dataset with id {dataset_id!r}")
    return row


def dataset_facts(session: Session, user: User, dataset_id: str) -> dict[str, Any] | None:
    """What `celif_core.spec.validate_spec(..., datasets=...)` needs about an uploaded dataset.

    Use as `validate_spec(data, datasets=lambda i: dataset_facts(session, user, i))`. Returns
    None when the user owns no dataset with that id (the spec is then refused with a 422).
    """
    return owned_dataset_facts(session, user.id, dataset_id)


def owned_dataset_facts(session: Session, owner_id: str, dataset_id: Any) -> dict[str, Any] | None:
    """The facts of dataset `dataset_id` if `owner_id` owns it, else None: another user's
    dataset and a missing one are the same to every caller."""
    if not isinstance(dataset_id, str):
        return None
    row = session.get(Dataset, dataset_id)
    if row is None or row.owner_id != owner_id:
        return None
    return {
        "seq_len": row.seq_len,
        "input_size": row.input_size,
        "output_size": row.output_size,
        "kind": row.kind,
        "target": row.target,
        "num_sequences": row.num_sequences,
    }


def job_dataset_error(session: Session, job: Any) -> str | None:
    """Why a stored job may not read its dataset (None when it may, or uses no dataset).

    A job's spec names a dataset id; the job's owner must own that dataset (checked again at
    every use, not only at submit: samples, predict and the worker read the file)."""
    spec = job.spec or {}
    task = spec.get("task") or {}
    if task.get("name") != "dataset":
        return None
    dataset_id = (task.get("params") or {}).get("dataset_id")
    if owned_dataset_facts(session, job.owner_id, dataset_id) is None:
        return f"no dataset with id {dataset_id!r}"
    return None
