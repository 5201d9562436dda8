"""HTTP layer of the studies domain: parse, call `service`, shape the response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from service.deps import CurrentUser, SessionDep, SettingsDep
from service.studies import service
from service.studies.schemas import ExtendIn, StudyIn, StudyList, StudyOut

router = APIRouter(prefix="/api/v1", tags=["studies"])
ERRORS = {401: {"description": "missing or invalid token"}, 404: {"description": "no such study"}}


@router.post(
    "/studies",
    status_code=201,
    response_model=StudyOut,
    responses={422: {"description": "`loc` names the trial and the field"}, **ERRORS},
)
def submit_study(
    body: StudyIn, user: CurrentUser, session: SessionDep, settings: SettingsDep, response: Response
) -> Any:
    """A base spec and a search space; every trial is validated before anything is stored.
    The trials are ordinary jobs; at most `max_concurrent` are queued or running at once."""
    study = service.submit_study(session, user, body, settings)
    response.headers["Location"] = f"/api/v1/studies/{study.id}"
    return service.study_out(session, study)


@router.get("/studies", response_model=StudyList, responses={401: {}})
def list_studies(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LIST)] = 50,
) -> Any:
    """Own studies, newest first (`best_trial` is filled in by GET /studies/{id})."""
    return StudyList(items=service.list_studies(session, user, limit=limit))


@router.get("/studies/{study_id}", response_model=StudyOut, responses=ERRORS)
def get_study(study_id: str, user: CurrentUser, session: SessionDep) -> Any:
    return service.study_out(session, service.get_owned_study(session, user, study_id))


@router.post("/studies/{study_id}/cancel", response_model=StudyOut, responses={409: {}, **ERRORS})
def cancel_study(study_id: str, user: CurrentUser, session: SessionDep) -> Any:
    """Cancel the unfinished trials (running ones within a step); nothing more is released."""
    return service.study_out(session, service.cancel_study(session, user, study_id))


@router.post(
    "/studies/{study_id}/extend", response_model=StudyOut, responses={409: {}, 422: {}, **ERRORS}
)
def extend_study(
    study_id: str, body: ExtendIn, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Any:
    """Add the trials of another search over the same base spec."""
    study = service.extend_study(session, user, study_id, body, settings)
    return service.study_out(session, study)


@router.get("/studies/{study_id}/table", responses=ERRORS)
def comparison_table(study_id: str, user: CurrentUser, session: SessionDep) -> Any:
    """The trials side by side: overridden fields, final and best objective, steps, wall time,
    firing rates and the energy estimate."""
    return service.comparison(session, user, study_id)


@router.get(
    "/studies/{study_id}/table.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}, **ERRORS},
)
def comparison_csv(study_id: str, user: CurrentUser, session: SessionDep) -> Response:
    return Response(
        service.comparison_csv(session, user, study_id),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id[:32]}.csv"'},
    )


@router.get(
    "/studies/{study_id}/curves.{fmt}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}, **ERRORS},
)
def study_curves(
    study_id: str,
    fmt: Literal["png", "svg"],
    user: CurrentUser,
    session: SessionDep,
    metric: Annotated[str | None, Query(max_length=64, description="default: objective")] = None,
) -> Response:
    """One metric of every trial overlaid, one line per trial."""
    from service.jobs.curves import MEDIA_TYPES

    return Response(
        service.curves_image(session, user, study_id, fmt, metric),
        media_type=MEDIA_TYPES[fmt],
        headers={"Cache-Control": "no-store"},
    )
