"""HTTP only: `POST /api/v1/checkpoints` (multipart upload of a checkpoint to start jobs from)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile, status
from pydantic import BaseModel

from service.checkpoints import service
from service.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1/checkpoints", tags=["checkpoints"])


class UploadedCheckpointOut(BaseModel):
    id: str
    sha256: str
    size_bytes: int
    step: int
    spec: dict[str, Any]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UploadedCheckpointOut)
def upload_checkpoint(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a .safetensors checkpoint of this service")],
) -> UploadedCheckpointOut:
    row = service.create_upload(
        session, user, settings, upload=file.file, name=file.filename or "checkpoint"
    )
    return UploadedCheckpointOut(
        id=row.id, sha256=row.sha256, size_bytes=row.size, step=row.step, spec=row.spec
    )
