"""GET /api/v1/workers: the workers as they last announced themselves, and per queue kind
whether any is online. Any authenticated user may read it (it names hosts and counts jobs,
never whose jobs they are)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobstore import workers
from jobstore.queue import QUEUES
from service.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1", tags=["workers"])


class WorkerOut(BaseModel):
    id: str = Field(description="the Celery node name, celif-<pid>@<host>")
    host: str
    queues: list[str] = Field(description="queue kinds it consumes: " + " | ".join(QUEUES))
    devices: list[str] = Field(description="cpu, and cuda when torch sees a CUDA device")
    running: int = Field(description="jobs its pool runs now (as of last_seen)")
    online: bool = Field(
        description="refreshed within worker_offline_after_s and not stopped; false: killed, "
        "cut off or shut down"
    )
    started_at: datetime
    last_seen: datetime


class QueueOut(BaseModel):
    online: int = Field(description="online workers that consume it")
    waiting_for: str = Field(description="what a job queued there waits for, in words")


class WorkerList(BaseModel):
    items: list[WorkerOut]
    queues: dict[str, QueueOut]


@router.get("/workers", response_model=WorkerList, responses={401: {}})
def list_workers(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Any:
    census = workers.census(session, settings.worker_offline_after_s)
    return WorkerList(
        items=[
            WorkerOut(
                id=w.id,
                host=w.host,
                queues=list(w.queues),
                devices=list(w.devices),
                running=w.running,
                online=w.online,
                started_at=w.started_at,
                last_seen=w.last_seen,
            )
            for w in census.workers
        ],
        queues={
            kind: QueueOut(online=len(census.online(kind)), waiting_for=census.waiting_for(kind)[0])
            for kind in QUEUES
        },
    )
