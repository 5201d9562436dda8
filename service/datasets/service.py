"""Uploaded datasets: store (validated, atomically), list, read, and resolve for job specs.

An upload is streamed to a temp file beside its final place (same filesystem), validated with
numpy (`validate.inspect_npz`), then stored under the key `datasets/<id>.npz` (the local
backend: renamed into `datasets_dir`) and recorded in one transaction. A refused upload leaves
nothing behind: no file, no row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobstore.artifacts import artifact_store, dataset_key
from jobstore.datasets import owned_dataset_facts
from jobstore.db.models import Dataset, User, new_id
from jobstore.files import staging_dir
from jobstore.settings import Settings
from service.datasets.validate import InvalidDataset, inspect_npz
from service.errors import NotFound, Unprocessable
from service.security import NUL, NUL_MESSAGE
from service.uploads import staged_upload


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
    dataset_id = new_id()
    key = dataset_key(f"{dataset_id}.npz")
    store = artifact_store(settings)
    with staged_upload(upload, staging_dir(store, key), settings.max_upload_bytes) as staged:
        if staged.size == 0:
            raise Unprocessable("the uploaded file is empty", loc=("body", "file"))
        try:
            facts = inspect_npz(
                staged.path, kind=kind, max_array_bytes=settings.dataset_bytes_limit
            )
        except InvalidDataset as exc:
            raise Unprocessable(str(exc), loc=("body", "file")) from None
        row = Dataset(
            id=dataset_id,
            owner_id=user.id,
            name=name,
            path=f"{dataset_id}.npz",
            size=staged.size,
            sha256=staged.sha256,
            num_sequences=facts.num_sequences,
            seq_len=facts.seq_len,
            input_size=facts.input_size,
            output_size=facts.output_size,
            kind=facts.kind,
            target=facts.target,
        )
        session.add(row)
        staged.store(session, store, key)
    return row


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
