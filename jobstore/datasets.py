"""Who may read an uploaded dataset: the facts a spec is validated against, and the ownership
check made at every use (submit, samples, predict, the worker's claim)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from jobstore.db.models import Dataset


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
