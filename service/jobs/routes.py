"""HTTP layer of the jobs domain: parse, call `service`, shape the response. No rules here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.db.models import TERMINAL_STATES
from service.deps import CurrentUser, SessionDep, SessionFactoryDep, SettingsDep
from service.errors import BadRequest
from service.jobs import repository as repo
from service.jobs import service
from service.jobs.schemas import (
    CheckpointOut,
    JobList,
    JobOut,
    MetricList,
    MetricPoint,
    ValidateOut,
    event_payload,
)

# Event ids (`seq`) are PostgreSQL bigint: a larger `after` could only fail in the database.
MAX_SEQ = 2**63 - 1

router = APIRouter(prefix="/api/v1", tags=["jobs"])

SPEC_EXAMPLE = {
    "name": "adding-100",
    "task": {"name": "adding", "params": {"seq_len": 100}},
    "model": {"neuron": "celif", "hidden": [64, 256, 256]},
    "training": {"max_steps": 5000, "batch_size": 256, "lr": 0.0005},
}
SpecBody = Annotated[
    dict[str, Any],
    Body(
        description="a job spec; omitted fields take their defaults (see GET /tasks, /neurons)",
        examples=[SPEC_EXAMPLE],
    ),
]
ERRORS = {401: {"description": "missing or invalid token"}, 404: {"description": "no such job"}}

# SSE timing; `create_app` copies these onto app.state, where tests may shorten them.
SSE_POLL_INTERVAL_S = 0.5
SSE_KEEPALIVE_S = 15.0
SSE_BATCH = 500


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": ValidateOut, "description": "dry_run=true: the validated spec"},
        409: {"description": "Idempotency-Key reused with a different spec"},
        422: {"description": "invalid spec; `loc` names the field"},
        **ERRORS,
    },
)
def submit_job(
    body: SpecBody,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    dry_run: Annotated[bool, Query(description="validate and estimate only")] = False,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    """Submit a training job. With `Idempotency-Key`, a retried request returns the same job
    (header `Idempotent-Replayed: true`) and queues nothing."""
    if dry_run:
        return JSONResponse(
            ValidateOut(**service.dry_run(session, user, body, settings)).model_dump(mode="json")
        )
    result = service.submit_job(session, user, body, settings, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/api/v1/jobs/{result.job.id}"
    if not result.created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.from_row(result.job)


@router.post("/jobs:validate", response_model=ValidateOut, responses={422: {}, 401: {}})
def validate_job(
    body: SpecBody, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Any:
    """Validate a spec without queueing it: the spec with defaults and an `estimate` of
    parameters and activation memory (same as `POST /jobs?dry_run=true`)."""
    return service.dry_run(session, user, body, settings)


@router.get("/jobs", response_model=JobList, responses={400: {}, 401: {}})
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    status: Annotated[list[str], Query(description="filter; repeat or comma-separate")] = [],  # noqa: B006
    task: Annotated[list[str], Query()] = [],  # noqa: B006
    neuron: Annotated[list[str], Query()] = [],  # noqa: B006
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
) -> Any:
    """Own jobs, newest first, `limit` per page."""
    jobs, next_cursor = service.list_jobs(
        session, user, statuses=status, tasks=task, neurons=neuron, cursor=cursor, limit=limit
    )
    return JobList(items=[JobOut.from_row(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: str, user: CurrentUser, session: SessionDep) -> Any:
    return JobOut.from_row(service.get_owned_job(session, user, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={409: {}, **ERRORS})
def cancel_job(job_id: str, user: CurrentUser, session: SessionDep) -> Any:
    """Cancel a queued job at once, or ask a running one to stop (`cancel_requested`; the
    worker ends it as `cancelled` within one step). 409 if it already finished."""
    return JobOut.from_row(service.cancel_job(session, user, job_id))


@router.get("/jobs/{job_id}/metrics", response_model=MetricList, responses=ERRORS)
def get_metrics(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="return points with seq > after")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> Any:
    """Learning-curve points in `seq` order; pass the last `seq` seen as `after` to read only
    new ones."""
    rows, more = service.list_metrics(session, user, job_id, after=after, limit=limit)
    items = [MetricPoint.from_row(e) for e in rows]
    return MetricList(items=items, last_seq=items[-1].seq if items else after, has_more=more)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
def job_events(
    job_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    factory: SessionFactoryDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="like Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events: every status/metric/checkpoint event of the job, in order, each with
    `id:` = its seq. Reconnect with `Last-Event-ID` to resume with no gap or duplicate. Comment
    lines keep idle connections alive; the stream ends with `event: end` once the job finished
    and everything was sent."""
    job = service.get_owned_job(session, user, job_id)
    start = after if after is not None else _parse_last_event_id(last_event_id)
    state = request.app.state
    return StreamingResponse(
        _event_stream(
            factory,
            job.id,
            start,
            poll_s=getattr(state, "sse_poll_interval_s", SSE_POLL_INTERVAL_S),
            keepalive_s=getattr(state, "sse_keepalive_s", SSE_KEEPALIVE_S),
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _parse_last_event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    try:
        seq = int(value.strip())
    except ValueError as exc:
        raise BadRequest("Last-Event-ID must be an event id sent by this stream") from exc
    if seq > MAX_SEQ:  # refused before the stream starts: the database's ids are bigint
        raise BadRequest(f"Last-Event-ID {seq} is over the largest event id ({MAX_SEQ})")
    return max(seq, 0)


def _read_batch(factory: sessionmaker[Session], job_id: str, after: int) -> tuple[list, str | None]:
    # The status is read *before* the events: a terminal status is committed together with its
    # event, so once we see it, the following read includes that final event.
    with factory() as s:
        job = repo.get_job(s, job_id)
        status = job.status if job is not None else None
        rows = repo.list_events(s, job_id, after=after, limit=SSE_BATCH)
        return [(e.id, e.kind, event_payload(e)) for e in rows], status


async def _event_stream(
    factory: sessionmaker[Session], job_id: str, after: int, *, poll_s: float, keepalive_s: float
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_write = time.monotonic()
    while True:
        batch, status = await run_in_threadpool(_read_batch, factory, job_id, after)
        for seq, kind, payload in batch:
            yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(payload, allow_nan=False)}\n\n"
            after = seq
        if batch:
            last_write = time.monotonic()
        if status is None or (status in TERMINAL_STATES and len(batch) < SSE_BATCH):
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if len(batch) == SSE_BATCH:
            continue  # more backlog: no sleep
        if time.monotonic() - last_write >= keepalive_s:
            yield ": keepalive\n\n"
            last_write = time.monotonic()
        await asyncio.sleep(poll_s)


@router.get(
    "/jobs/{job_id}/curves.{fmt}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}, **ERRORS},
)
def get_curves(
    job_id: str, fmt: Literal["png", "svg"], user: CurrentUser, session: SessionDep
) -> Response:
    """The learning curves as an image: one panel per metric, one line per split."""
    from service.jobs.curves import MEDIA_TYPES, render_curves

    job = service.get_owned_job(session, user, job_id)
    events = repo.list_events(session, job.id, kinds=("metric",), limit=1_000_000)
    title = f"{job.name or job.id} ({job.task_name}, {job.neuron}) - {job.status}"
    return Response(
        render_curves(title, events, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/checkpoints", response_model=list[CheckpointOut], responses=ERRORS)
def list_checkpoints(job_id: str, user: CurrentUser, session: SessionDep) -> Any:
    return [CheckpointOut.from_row(c) for c in service.list_checkpoints(session, user, job_id)]


@router.get(
    "/jobs/{job_id}/checkpoints/{ref}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **ERRORS},
)
def download_checkpoint(
    job_id: str, ref: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """Download a checkpoint (`ref` = `latest`, `best` or an id): safetensors with the spec in
    its metadata. `X-Checkpoint-SHA256` carries the digest to verify it."""
    job = service.get_owned_job(session, user, job_id)
    ckpt, path = service.resolve_checkpoint(session, job, ref, storage_dir=settings.storage_dir)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{job.id}-step{ckpt.step}.safetensors",
        headers={
            "X-Checkpoint-Id": ckpt.id,
            "X-Checkpoint-Step": str(ckpt.step),
            "X-Checkpoint-SHA256": ckpt.sha256,
            "ETag": f'"{ckpt.sha256}"',
        },
    )
