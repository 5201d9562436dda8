"""HTTP layer of the jobs domain: parse, call `service`, shape the response. No rules here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse

from service.deps import CurrentUser, SessionDep, SessionFactoryDep, SettingsDep
from service.jobs import service, sse
from service.jobs.schemas import (
    CheckpointOut,
    JobList,
    JobOut,
    MetricList,
    MetricPoint,
    ValidateOut,
)

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
    return JobOut.from_row(result.job, service.queue_census(session, settings, [result.job]))


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
    settings: SettingsDep,
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
    census = service.queue_census(session, settings, jobs)
    return JobList(items=[JobOut.from_row(j, census) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(job_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Any:
    job = service.get_owned_job(session, user, job_id)
    return JobOut.from_row(job, service.queue_census(session, settings, [job]))


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
        int, Query(ge=0, le=sse.MAX_SEQ, description="return points with seq > after")
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
    after: Annotated[
        int | None, Query(ge=0, le=sse.MAX_SEQ, description="like Last-Event-ID")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: every status/metric/checkpoint event of the job, in order, each with
    `id:` = its seq. Reconnect with `Last-Event-ID` to resume with no gap or duplicate. Comment
    lines keep idle connections alive; the stream ends with `event: end` once the job finished
    and everything was sent."""
    job = service.get_owned_job(session, user, job_id)
    start = after if after is not None else sse.parse_last_event_id(last_event_id)
    state = request.app.state
    return StreamingResponse(
        sse.event_stream(
            factory,
            job.id,
            start,
            poll_s=getattr(state, "sse_poll_interval_s", sse.POLL_INTERVAL_S),
            keepalive_s=getattr(state, "sse_keepalive_s", sse.KEEPALIVE_S),
            listener=sse.event_listener(state, state.settings),
            fallback_s=getattr(state, "sse_notify_fallback_s", sse.NOTIFY_FALLBACK_S),
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/jobs/{job_id}/curves.{fmt}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}, **ERRORS},
)
def get_curves(
    job_id: str, fmt: Literal["png", "svg"], user: CurrentUser, session: SessionDep
) -> Response:
    """The learning curves as an image: one panel per metric, one line per split."""
    from service.jobs.curves import MEDIA_TYPES

    return Response(
        service.curves_image(session, user, job_id, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/checkpoints", response_model=list[CheckpointOut], responses=ERRORS)
def list_checkpoints(job_id: str, user: CurrentUser, session: SessionDep) -> Any:
    return [CheckpointOut.from_row(c) for c in service.list_checkpoints(session, user, job_id)]


@router.get(
    "/jobs/{job_id}/checkpoints/{ref}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        307: {"description": "with `download_redirect`: a presigned URL of the object store"},
        **ERRORS,
    },
)
def download_checkpoint(
    job_id: str, ref: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    """Download a checkpoint (`ref` = `latest`, `best` or an id): safetensors with the spec in
    its metadata. `X-Checkpoint-SHA256` carries the digest to verify it. On an object store
    the bytes are streamed from it (or, with `download_redirect`, a 307 to a presigned URL)."""
    job = service.get_owned_job(session, user, job_id)
    found = service.checkpoint_download(session, job, ref, settings)
    ckpt = found.checkpoint
    filename = f"{job.id}-step{ckpt.step}.safetensors"
    headers = {
        "X-Checkpoint-Id": ckpt.id,
        "X-Checkpoint-Step": str(ckpt.step),
        "X-Checkpoint-SHA256": ckpt.sha256,
        "ETag": f'"{ckpt.sha256}"',
    }
    if found.url is not None:
        return RedirectResponse(found.url, status_code=307, headers=headers)
    if found.path is not None:
        return FileResponse(
            found.path, media_type="application/octet-stream", filename=filename, headers=headers
        )
    headers["Content-Length"] = str(ckpt.size)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(found.chunks, media_type="application/octet-stream", headers=headers)
