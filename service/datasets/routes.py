"""HTTP only: `POST /api/v1/datasets` (multipart NPZ upload), `GET` list and one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile, status

from service.datasets import service
from service.datasets.schemas import DatasetList, DatasetOut
from service.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def upload_dataset(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="NPZ with x [N,T,F] float, y [N] or [N,T]")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    kind: Annotated[Literal["auto", "classification", "regression"], Form()] = "auto",
) -> DatasetOut:
    row = service.create_dataset(
        session,
        user,
        settings,
        upload=file.file,
        name=name or file.filename or "dataset",
        kind=kind,
    )
    return DatasetOut.model_validate(row)


@router.get("", response_model=DatasetList)
def list_datasets(session: SessionDep, user: CurrentUser) -> DatasetList:
    rows = service.list_datasets(session, user)
    return DatasetList(items=[DatasetOut.model_validate(r) for r in rows])


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, user: CurrentUser) -> DatasetOut:
    return DatasetOut.model_validate(service.get_owned_dataset(session, user, dataset_id))
