"""Rules of the studies domain: a study's trials planned and validated as a whole, stored as
ordinary jobs (the first `max_concurrent` queued, the rest waiting), cancel, extend, and the
comparison table. The request's unit of work commits; messages go after the commit."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from celif_core.spec import JobSpec, SpecError
from celif_core.study import apply_overrides, expand_search
from jobstore import studies as repo
from jobstore.db.models import TERMINAL_STATES, Job, Study, User, utcnow
from jobstore.files import InitSource
from jobstore.settings import Settings
from service.errors import Conflict, NotFound, Unprocessable, spec_error_to_unprocessable
from service.jobs import service as jobs
from service.jobs.schemas import finite, utc
from service.studies.schemas import ExtendIn, StudyIn, StudyOut

MAX_LIST = 100


def get_owned_study(
    session: Session, user: User, study_id: str, *, for_update: bool = False
) -> Study:
    """The study if `user` owns it; 404 otherwise (another user's is indistinguishable from a
    missing one)."""
    study = (repo.lock_study if for_update else repo.get_study)(session, study_id)
    if study is None or study.owner_id != user.id:
        raise NotFound(f"no study with id {study_id!r}")
    return study


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class TrialPlan:
    index: int
    overrides: dict[str, Any]
    spec: JobSpec
    init_source: InitSource | None


def plan_trials(
    session: Session,
    user: User,
    settings: Settings,
    base: dict[str, Any],
    search: dict[str, Any],
    *,
    start: int,
) -> list[TrialPlan]:
    """Every trial of `search` over `base`, each spec validated; the first error is a 422 whose
    `loc` names the trial and the field (`["body", "trials", 3, "training", "lr"]`)."""
    cap = settings.max_study_trials
    try:
        trials = expand_search(search, max_trials=cap)
    except SpecError as exc:
        raise spec_error_to_unprocessable(exc) from exc
    if start + len(trials) > cap:
        raise Unprocessable(
            f"the study has {start} trials; {len(trials)} more would pass the limit of {cap}",
            loc=("body", "search"),
        )
    plans = []
    for i, overrides in enumerate(trials, start=start):
        try:
            body = apply_overrides(base, overrides)
            spec = jobs.validate_job_spec(session, user, body, settings)
            plans.append(
                TrialPlan(i, overrides, spec, jobs._init_source(session, user, settings, spec))
            )
        except SpecError as exc:
            raise _trial_error(i, overrides, exc.errors) from exc
        except Unprocessable as exc:
            raise _trial_error(
                i, overrides, [{**e, "loc": e["loc"][1:]} for e in exc.errors]
            ) from exc
    return plans


def _trial_error(index: int, overrides: dict[str, Any], errors: list[dict]) -> Unprocessable:
    where = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return Unprocessable.from_errors(
        [
            {
                "loc": ["body", "trials", index, *e["loc"]],
                "msg": f"trial {index} ({where}): {'.'.join(map(str, e['loc']))}: {e['msg']}",
                "type": e["type"],
            }
            for e in errors
        ]
    )


def _store_trials(
    session: Session, user: User, settings: Settings, study: Study, plans: list[TrialPlan]
) -> None:
    for plan in plans:
        jobs.store_job(
            session,
            user,
            settings,
            plan.spec,
            plan.init_source,
            status="waiting",
            study_id=study.id,
            trial_index=plan.index,
            overrides=plan.overrides,
        )
    study.trial_count += len(plans)
    session.flush()
    repo.release_waiting(session, study.id, skip_locked=False)  # the first max_concurrent


# ----------------------------------------------------------------------------- submit/extend
def submit_study(session: Session, user: User, body: StudyIn, settings: Settings) -> Study:
    """Validate every trial, then store the study and its trials (nothing when one fails)."""
    plans = plan_trials(session, user, settings, body.base, body.search, start=0)
    study = Study(
        owner_id=user.id,
        name=body.name,
        base=body.base,
        searches={"items": [body.search]},
        objective=body.objective.model_dump(),
        max_concurrent=body.max_concurrent,
        early_stopping=body.early_stopping_dict(),
        rung_decisions={},
        trial_count=0,
    )
    session.add(study)
    session.flush()
    _store_trials(session, user, settings, study, plans)
    return study


def extend_study(
    session: Session, user: User, study_id: str, body: ExtendIn, settings: Settings
) -> Study:
    """More trials from a new search over the same base; they queue behind the waiting ones.
    A cancelled study is a 409."""
    study = get_owned_study(session, user, study_id, for_update=True)
    if study.cancel_requested:
        raise Conflict(f"study {study.id} was cancelled; submit a new one")
    plans = plan_trials(session, user, settings, study.base, body.search, start=study.trial_count)
    study.searches = {"items": [*(study.searches or {}).get("items", []), body.search]}
    _store_trials(session, user, settings, study, plans)
    return study


def cancel_study(session: Session, user: User, study_id: str) -> Study:
    """Cancel every unfinished trial (waiting and queued at once, running within a step) and
    release no more. A study with nothing left to cancel is a 409."""
    study = get_owned_study(session, user, study_id, for_update=True)
    trials = repo.list_trials(session, study.id)
    unfinished = [t for t in trials if t.status not in TERMINAL_STATES]
    if not unfinished and study.cancel_requested:
        raise Conflict(f"study {study.id} was already cancelled")
    study.cancel_requested = True
    session.flush()
    for trial in unfinished:
        job = jobs.repo.get_job(session, trial.id, for_update=True)
        if job is not None and job.status not in TERMINAL_STATES:
            jobs.stop_job(session, job)
    return study


# ----------------------------------------------------------------------------- reads
def best_values(session: Session, study: Study, trials: list[Job]) -> dict[str, tuple[float, int]]:
    """{job id: (best value, its step)} of the objective over each trial's curve."""
    split, name = repo.split_metric(study.objective["metric"])
    series = repo.metric_series(session, [t.id for t in trials], split, name)
    sign = 1 if study.objective.get("mode", "min") == "min" else -1
    out = {}
    for job_id, points in series.items():
        finite_points = [(v, s) for s, v in points if v is not None and math.isfinite(v)]
        if finite_points:
            out[job_id] = min(finite_points, key=lambda p: sign * p[0])
    return out


def study_out(session: Session, study: Study) -> StudyOut:
    trials = repo.list_trials(session, study.id)
    return StudyOut.from_row(study, trials, best_values(session, study, trials))


def list_studies(session: Session, user: User, *, limit: int) -> list[StudyOut]:
    rows = repo.list_studies(session, user.id, limit=max(1, min(limit, MAX_LIST)))
    trials = repo.trials_by_study(session, [s.id for s in rows])
    return [StudyOut.from_row(s, trials.get(s.id, []), {}) for s in rows]


def comparison(session: Session, user: User, study_id: str) -> dict[str, Any]:
    """The trials side by side: overridden fields, the objective's final and best values,
    steps, wall time, firing rates and the energy estimate."""
    study = get_owned_study(session, user, study_id)
    trials = repo.list_trials(session, study.id)
    best = best_values(session, study, trials)
    metric = study.objective["metric"]
    fields = list(dict.fromkeys(k for t in trials for k in (t.overrides or {})))
    rows = [_row(t, metric, best.get(t.id)) for t in trials]
    return {"study_id": study.id, "objective": study.objective, "fields": fields, "rows": rows}


def _wall_time(job: Job) -> float | None:
    if job.started_at is None:
        return None
    end = utc(job.finished_at) or utcnow()
    return round((end - utc(job.started_at)).total_seconds(), 3)


def _row(job: Job, metric: str, best: tuple[float, int] | None) -> dict[str, Any]:
    tel = job.telemetry or {}
    latest = job.latest_metrics or {}
    return {
        "trial": job.trial_index,
        "job_id": job.id,
        "status": job.status,
        "overrides": job.overrides or {},
        "step": job.step,
        "max_steps": job.max_steps,
        "wall_time_s": _wall_time(job),
        "final": finite(latest.get(metric)) if isinstance(latest.get(metric), float) else None,
        "best": finite(best[0]) if best else None,
        "best_step": best[1] if best else None,
        "latest_metrics": {k: finite(v) if isinstance(v, float) else v for k, v in latest.items()},
        "mean_firing_rate": _mean_rate(job, tel.get("firing_rates")),
        "firing_rates": tel.get("firing_rates"),
        "energy_nj": tel.get("energy_nj"),
        "energy_nj_per_step": tel.get("energy_nj_per_step"),
    }


def _mean_rate(job: Job, rates: list[float] | None) -> float | None:
    """Spikes per neuron per step over all hidden layers (layers weighted by their width)."""
    if not rates:
        return None
    hidden = ((job.spec or {}).get("model") or {}).get("hidden") or []
    widths = hidden if len(hidden) == len(rates) else [1] * len(rates)
    return sum(r * n for r, n in zip(rates, widths, strict=True)) / sum(widths)


def comparison_csv(session: Session, user: User, study_id: str) -> str:
    table = comparison(session, user, study_id)
    metrics = list(dict.fromkeys(k for r in table["rows"] for k in r["latest_metrics"]))
    head = ["trial", "job_id", "status", *table["fields"], "step", "max_steps", "wall_time_s",
            "final", "best", "best_step", *metrics, "mean_firing_rate", "firing_rates",
            "energy_nj", "energy_nj_per_step"]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(head)
    for r in table["rows"]:
        rates = r["firing_rates"]
        writer.writerow(
            [r["trial"], r["job_id"], r["status"]]
            + [_cell(r["overrides"].get(f)) for f in table["fields"]]
            + [r[k] for k in ("step", "max_steps", "wall_time_s", "final", "best", "best_step")]
            + [_cell(r["latest_metrics"].get(m)) for m in metrics]
            + [r["mean_firing_rate"], ";".join(f"{x:.6g}" for x in rates) if rates else ""]
            + [r["energy_nj"], r["energy_nj_per_step"]]
        )
    return out.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return value if isinstance(value, str | int | float) else str(value)


def curves_image(
    session: Session, user: User, study_id: str, fmt: str, metric: str | None
) -> bytes:
    """One line per trial of `metric` (default: the objective), labelled by its overrides."""
    from celif_core.curves import render_curves

    study = get_owned_study(session, user, study_id)
    metric = metric or study.objective["metric"]
    trials = repo.list_trials(session, study.id)
    split, name = repo.split_metric(metric)
    series = repo.metric_series(session, [t.id for t in trials], split, name)
    points = [
        {"step": step, "split": _label(t), "name": metric, "value": value}
        for t in trials
        for step, value in series.get(t.id, [])
    ]
    title = f"{study.name or study.id}: {metric} by trial"
    return render_curves(title, points, fmt)


def _label(job: Job) -> str:
    where = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (job.overrides or {}).items())
    return f"#{job.trial_index:02d} {where}"[:60]
