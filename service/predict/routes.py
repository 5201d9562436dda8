"""HTTP only: predict, streaming predict, TE similarity (JSON and PNG), task samples."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status

from service.deps import CurrentUser, SessionDep, SettingsDep, end_unit_of_work
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


def get_runtime(request: Request, settings: SettingsDep) -> service.Runtime:
    return service.get_runtime(request.app.state, settings)


RuntimeDep = Annotated[service.Runtime, Depends(get_runtime)]
Split = Annotated[Literal["val", "test"], Query(description="evaluation split")]
Count = Annotated[int, Query(ge=1, le=service.MAX_SAMPLES, description="how many sequences")]
Offset = Annotated[int, Query(ge=0, le=100_000, description="index of the first sequence")]


@router.post("/jobs/{job_id}/predict", response_model=PredictResponse)
def predict(
    job_id: str,
    body: PredictRequest,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> dict:
    started = time.perf_counter()
    returns = list(body.return_)
    target = service.predict_target(
        session,
        user,
        job_id,
        inputs=body.inputs,
        checkpoint=body.checkpoint,
        returns=returns,
        spikes_layer=body.spikes_layer,
        settings=settings,
    )
    end_unit_of_work(session)  # the forward pass reads no database
    return service.predict(
        target, returns=returns, spikes_layer=body.spikes_layer, runtime=runtime, started=started
    )


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
    return service.feed_chunk(
        user, job_id, stream_id, inputs=body.inputs, settings=settings, runtime=runtime
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
