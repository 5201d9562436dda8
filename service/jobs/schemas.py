"""API schemas of the jobs domain (separate from the ORM tables)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from jobstore.db.models import JOB_STATES, TERMINAL_STATES, Checkpoint, Job, JobEvent
from jobstore.queue import QUEUES, job_queue
from jobstore.states import can_follow
from jobstore.workers import Census

API_PREFIX = "/api/v1"


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC); answer timezone-aware everywhere."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: a diverged metric is reported as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def clean_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        out[key] = finite(value) if isinstance(value, float) else value
    return out


class Progress(BaseModel):
    step: int
    max_steps: int = Field(description="the step budget (max_epochs converted to steps)")
    fraction: float
    epoch: float | None = Field(
        None, description="passes over the training split so far (jobs with an epoch budget)"
    )
    max_epochs: int | None = None


def _progress(job: Job, step: int, max_steps: int) -> Progress:
    max_epochs = ((job.spec or {}).get("training") or {}).get("max_epochs")
    fraction = min(step / max_steps, 1.0)
    return Progress(
        step=step,
        max_steps=max_steps,
        fraction=round(fraction, 6),
        # max_steps = ceil(max_epochs * split / batch): the epoch to within one batch
        epoch=round(fraction * max_epochs, 3) if max_epochs else None,
        max_epochs=max_epochs,
    )


class JobLinks(BaseModel):
    self: str
    events: str
    metrics: str
    curves: str
    checkpoints: str
    cancel: str


class JobOut(BaseModel):
    id: str
    name: str | None
    status: str = Field(description=" | ".join(JOB_STATES))
    finished: bool = Field(description="the status is final (" + ", ".join(TERMINAL_STATES) + ")")
    can_cancel: bool = Field(description="POST .../cancel would stop it (it has not finished)")
    task: str
    neuron: str
    spec: dict[str, Any] = Field(description="the validated spec with every default filled in")
    progress: Progress
    latest_metrics: dict[str, Any]
    best_metrics: dict[str, Any]
    telemetry: dict[str, Any]
    backend: str | None
    device: str | None
    error: str | None
    attempts: int
    cancel_requested: bool
    queue: str = Field(
        description="the queue its training.device sends it to: "
        + " | ".join(QUEUES)
        + " (cuda -> gpu, cpu -> cpu, auto -> any: every worker takes it)"
    )
    waiting_for: str | None = Field(
        None,
        description="a queued job: the worker it waits for, e.g. 'a GPU worker (2 online)' or "
        "'a GPU worker: none is online (last seen 12 min ago)'; null otherwise",
    )
    queue_has_worker: bool | None = Field(
        None,
        description="a queued job: whether an online worker consumes its queue (false: it "
        "waits until one starts); null otherwise",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    links: JobLinks

    @classmethod
    def from_row(cls, job: Job, census: Census | None = None) -> JobOut:
        """`census` (the worker registry, read once per request) fills `waiting_for` of a
        queued job."""
        base = f"{API_PREFIX}/jobs/{job.id}"
        max_steps = max(int(job.max_steps or 0), 1)
        step = int(job.step or 0)
        queue = job_queue(job.spec)
        waiting_for, has_worker = None, None
        if census is not None and job.status == "queued":
            waiting_for, has_worker = census.waiting_for(queue)
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            finished=job.status in TERMINAL_STATES,
            can_cancel=can_follow(job.status, "cancelled"),
            task=job.task_name,
            neuron=job.neuron,
            spec=job.spec,
            progress=_progress(job, step, max_steps),
            latest_metrics=clean_metrics(job.latest_metrics),
            best_metrics=clean_metrics(job.best_metrics),
            telemetry=job.telemetry or {},
            backend=job.backend,
            device=job.device,
            error=job.error,
            attempts=job.attempts or 0,
            cancel_requested=bool(job.cancel_requested),
            queue=queue,
            waiting_for=waiting_for,
            queue_has_worker=has_worker,
            created_at=utc(job.created_at),
            started_at=utc(job.started_at),
            finished_at=utc(job.finished_at),
            updated_at=utc(job.updated_at),
            links=JobLinks(
                self=base,
                events=f"{base}/events",
                metrics=f"{base}/metrics",
                curves=f"{base}/curves.png",
                checkpoints=f"{base}/checkpoints",
                cancel=f"{base}/cancel",
            ),
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as `cursor=` for the next page; null on the last page"
    )


class MetricPoint(BaseModel):
    seq: int = Field(description="the event id: increasing, use as `after=`")
    step: int | None
    epoch: float | None
    split: str | None
    name: str
    value: float | None
    time: datetime

    @classmethod
    def from_row(cls, e: JobEvent) -> MetricPoint:
        return cls(
            seq=e.id,
            step=e.step,
            epoch=e.epoch,
            split=e.split,
            name=e.name or "",
            value=finite(e.value),
            time=utc(e.time),
        )


class MetricList(BaseModel):
    items: list[MetricPoint]
    last_seq: int | None = Field(description="largest seq returned (or `after` when none)")
    has_more: bool


class CheckpointOut(BaseModel):
    id: str
    step: int
    metrics: dict[str, Any]
    size: int
    sha256: str
    is_best: bool
    created_at: datetime
    download: str

    @classmethod
    def from_row(cls, c: Checkpoint) -> CheckpointOut:
        return cls(
            id=c.id,
            step=c.step,
            metrics=clean_metrics(c.metrics),
            size=c.size,
            sha256=c.sha256,
            is_best=bool(c.is_best),
            created_at=utc(c.created_at),
            download=f"{API_PREFIX}/jobs/{c.job_id}/checkpoints/{c.id}",
        )


class Estimate(BaseModel):
    parameters: int
    activation_bytes: int
    seq_len: int
    total_steps: int = Field(description="the step budget (max_epochs converted to steps)")
    train_size: int | None = Field(description="examples per epoch; None: the task has no epochs")


class ValidateOut(BaseModel):
    valid: bool = True
    spec: dict[str, Any]
    estimate: Estimate


def event_payload(e: JobEvent) -> dict[str, Any]:
    """The JSON `data` of one SSE event."""
    if e.kind == "metric":
        return MetricPoint.from_row(e).model_dump(mode="json")
    return {"seq": e.id, "kind": e.kind, "time": utc(e.time).isoformat(), **(e.data or {})}
