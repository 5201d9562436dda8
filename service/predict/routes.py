"""HTTP only: predict, streaming predict, TE similarity (JSON and PNG), task samples."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from jobstore.db.session import get_sessionmaker, transaction
from jobstore.settings import Settings
from service.deps import (
    BearerDep,
    CurrentUser,
    SessionDep,
    SettingsDep,
    authenticate_detached,
    cached_user,
    end_unit_of_work,
)
from service.jobs.service import get_owned_job
from service.predict import service
from service.predict.schemas import (
    ChunkResponse,
    PredictRequest,
    PredictResponse,
    Samples,
    StreamChunk,
    StreamCreate,
    StreamOut,
    TeSimilarity,
)

router = APIRouter(prefix="/api/v1", tags=["predict"])


async def get_runtime(request: Request, settings: SettingsDep) -> service.Runtime:
    return service.get_runtime(request.app.state, settings)


RuntimeDep = Annotated[service.Runtime, Depends(get_runtime)]
Split = Annotated[Literal["val", "test"], Query(description="evaluation split")]
Count = Annotated[int, Query(ge=1, le=service.MAX_SAMPLES, description="how many sequences")]
Offset = Annotated[int, Query(ge=0, le=100_000, description="index of the first sequence")]


def _body_errors(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        # No `input`/`ctx`: an undecodable body's bytes could not be rendered as JSON.
        [
            {**e, "loc": ("body", *e["loc"])}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
    )


async def read_predict_request(request: Request, settings: Settings) -> PredictRequest:
    """The body: JSON (`PredictRequest`), or `application/x-npy` holding `inputs` with the
    other fields as query parameters (`checkpoint`, `return` repeated, `spikes_layer`)."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype == service.NPY:
            query = request.query_params
            fields: dict[str, Any] = {"inputs": service.load_npy(raw, max_values=settings.max_predict_values)}  # fmt: skip
            if "checkpoint" in query:
                fields["checkpoint"] = query["checkpoint"]
            if "return" in query:
                fields["return"] = query.getlist("return")
            if "spikes_layer" in query:
                fields["spikes_layer"] = query["spikes_layer"]
            return PredictRequest.model_validate(fields)
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise _body_errors(exc) from None


def wants_npy(request: Request) -> bool:
    return service.NPY in request.headers.get("accept", "").lower()


def npy_response(result: dict) -> Response:
    ckpt = result["checkpoint"]
    headers = {
        "X-Job-Id": result["job_id"],
        "X-Checkpoint-Id": ckpt["id"],
        "X-Checkpoint-Step": str(ckpt["step"]),
        "X-Checkpoint-SHA256": ckpt["sha256"],
        "X-Predict-Kind": result["kind"],
        "X-Model-Cached": "true" if result["cached"] else "false",
        "X-Elapsed-Ms": str(result["elapsed_ms"]),
    }
    if result.get("firing_rates") is not None:
        headers["X-Firing-Rates"] = ",".join(repr(r) for r in result["firing_rates"])
    return Response(service.npy_bytes(result["array"]), media_type=service.NPY, headers=headers)


PREDICT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema(by_alias=True)},
            service.NPY: {
                "schema": {"type": "string", "format": "binary"},
                "description": "`inputs` as an NPY array; `checkpoint`, `return`, "
                "`spikes_layer` as query parameters",
            },
        },
    }
}


@router.post(
    "/jobs/{job_id}/predict",
    response_model=PredictResponse,
    openapi_extra=PREDICT_BODY_DOC,
    responses={
        200: {"content": {service.NPY: {}}, "description": "JSON, or NPY on `Accept`"},
        503: {"description": "the predict queue is full (`Retry-After`)"},
    },
)
async def predict(
    job_id: str,
    request: Request,
    credentials: BearerDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Any:
    """No thread hop when the token and the job's lookups are cached (their TTLs bound the
    staleness); otherwise one, for the database reads; then the forward on the predict pool."""
    started = time.perf_counter()
    user = cached_user(request, credentials)  # a 401 at once without a bearer token
    factory = get_sessionmaker(settings.database_url)
    if user is None:
        user = await run_in_threadpool(authenticate_detached, request, factory, credentials)
    body = await read_predict_request(request, settings)
    fields = target_fields(body, settings)
    target = service.cached_target(runtime.lookups, user.id, job_id, **fields)
    if target is None:

        def read_target() -> service.PredictTarget:
            with transaction(factory) as session:
                return service.predict_target(
                    session, user, job_id, lookups=runtime.lookups, **fields
                )

        target = await run_in_threadpool(read_target)
    return await answer(request, target, body, runtime, started)


def target_fields(body: PredictRequest, settings: Settings) -> dict[str, Any]:
    """What `cached_target` / `predict_target` take of a request besides its user and job."""
    return dict(
        inputs=body.inputs,
        checkpoint=body.checkpoint,
        returns=list(body.return_),
        spikes_layer=body.spikes_layer,
        settings=settings,
    )


async def answer(
    request: Request,
    target: service.PredictTarget,
    body: PredictRequest,
    runtime: service.Runtime,
    started: float,
) -> Any:
    """The forward on the predict pool, and the answer: an NPY response when `Accept` asks
    for it, else the result dict (the route's `response_model`)."""
    as_array = wants_npy(request)
    result = await service.run_predict(
        target,
        runtime=runtime,
        returns=list(body.return_),
        spikes_layer=body.spikes_layer,
        started=started,
        as_array=as_array,
    )
    return npy_response(result) if as_array else result


@router.post(
    "/jobs/{job_id}/streams", status_code=status.HTTP_201_CREATED, response_model=StreamOut
)
def open_stream(
    job_id: str,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    runtime: RuntimeDep,
    body: StreamCreate | None = None,
) -> dict:
    body = body or StreamCreate()
    return service.open_stream(
        session, user, job_id, checkpoint=body.checkpoint, settings=settings, runtime=runtime
    )


@router.post("/jobs/{job_id}/streams/{stream_id}/chunks", response_model=ChunkResponse)
def feed_chunk(
    job_id: str,
    stream_id: str,
    body: StreamChunk,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> dict:
    get_owned_job(session, user, job_id)
    end_unit_of_work(session)
    return service.on_pool(
        runtime,
        service.feed_chunk,
        user,
        job_id,
        stream_id,
        inputs=body.inputs,
        settings=settings,
        runtime=runtime,
    )


@router.delete("/jobs/{job_id}/streams/{stream_id}", status_code=status.HTTP_204_NO_CONTENT)
def close_stream(
    job_id: str, stream_id: str, session: SessionDep, user: CurrentUser, runtime: RuntimeDep
) -> Response:
    service.close_stream(session, user, job_id, stream_id, runtime)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def te_similarity_result(
    job_id: str,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    runtime: RuntimeDep,
    checkpoint: str = "best",
    layer: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    """The TE similarity of a job's checkpoint: what both the JSON and the PNG route serve."""
    return service.te_similarity(
        session,
        user,
        job_id,
        checkpoint=checkpoint,
        layer=layer,
        settings=settings,
        runtime=runtime,
    )


TeSimilarityResult = Annotated[dict, Depends(te_similarity_result)]


@router.get("/jobs/{job_id}/te_similarity", response_model=TeSimilarity)
def te_similarity(result: TeSimilarityResult) -> dict:
    return {**result, "matrix": result["matrix"].round(4).tolist()}


@router.get(
    "/jobs/{job_id}/te_similarity.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def te_similarity_png(result: TeSimilarityResult) -> Response:
    return Response(service.te_similarity_png(result), media_type="image/png")


@router.get("/jobs/{job_id}/samples", response_model=Samples)
def job_samples(
    job_id: str,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    split: Split = "test",
    n: Count = 8,
    offset: Offset = 0,
) -> dict:
    return service.job_samples(
        session, user, job_id, split=split, n=n, offset=offset, settings=settings
    )


@router.get("/tasks/{name}/samples", response_model=Samples)
def task_samples(
    name: str,
    user: CurrentUser,
    settings: SettingsDep,
    split: Split = "test",
    n: Count = 8,
    offset: Offset = 0,
) -> dict:
    return service.task_samples(name, split=split, n=n, offset=offset, settings=settings)
