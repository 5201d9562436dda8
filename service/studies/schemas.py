"""API schemas of the studies domain."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobstore.db.models import JOB_STATES, TERMINAL_STATES, Job, Study
from service.jobs.schemas import API_PREFIX, finite, utc

MAX_CONCURRENT = 64


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(_In):
    metric: str = Field(
        "val_loss", max_length=64, description="a key of latest_metrics, e.g. val_mse"
    )
    mode: Literal["min", "max"] = "min"


class EarlyStopping(_In):
    """Asynchronous successive halving (ASHA) over `metric` at `rungs`."""

    algorithm: Literal["asha"] = "asha"
    metric: str | None = Field(None, max_length=64, description="default: the objective's")
    mode: Literal["min", "max"] | None = None
    unit: Literal["steps", "epochs"] = "steps"
    rungs: list[float] = Field(min_length=1, max_length=20, description="increasing")
    reduction_factor: int = Field(2, ge=2, le=16, description="keep the top 1/factor at a rung")
    grace: int | None = Field(
        None, ge=1, le=1000, description="values at a rung before it decides (default: factor)"
    )

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: list[float]) -> list[float]:
        if any(r <= 0 for r in rungs) or any(
            b <= a for a, b in zip(rungs, rungs[1:], strict=False)
        ):
            raise ValueError("rungs must be positive and increasing")
        return rungs


class StudyIn(_In):
    name: str | None = Field(None, max_length=200)
    base: dict[str, Any] = Field(description="the job spec every trial starts from")
    search: dict[str, Any] = Field(description="grid, random or list; see docs/studies.md")
    objective: Objective = Field(default_factory=Objective)
    max_concurrent: int = Field(2, ge=1, le=MAX_CONCURRENT, description="trials queued/running")
    early_stopping: EarlyStopping | None = None

    @model_validator(mode="after")
    def _epoch_rungs(self) -> StudyIn:
        es = self.early_stopping
        if es is not None and es.unit == "steps" and any(r != int(r) for r in es.rungs):
            raise ValueError("early_stopping.rungs in steps are whole numbers")
        return self

    def early_stopping_dict(self) -> dict[str, Any] | None:
        es = self.early_stopping
        if es is None:
            return None
        out = es.model_dump()
        out["metric"] = es.metric or self.objective.metric
        out["mode"] = es.mode or self.objective.mode
        out["grace"] = es.grace or es.reduction_factor
        if es.unit == "steps":
            out["rungs"] = [int(r) for r in es.rungs]
        return out


class ExtendIn(_In):
    search: dict[str, Any]


class TrialOut(BaseModel):
    index: int
    job_id: str
    status: str
    overrides: dict[str, Any]
    step: int
    max_steps: int
    objective: float | None = Field(description="the objective's best value so far")
    link: str


class StudyProgress(BaseModel):
    trials: int
    finished: int
    fraction: float
    by_status: dict[str, int]


class StudyOut(BaseModel):
    id: str
    name: str | None
    status: str = Field(description="running | cancelling | completed | failed | cancelled")
    progress: StudyProgress
    objective: dict[str, Any]
    max_concurrent: int
    early_stopping: dict[str, Any] | None
    searches: list[dict[str, Any]]
    best_trial: TrialOut | None
    trials: list[TrialOut]
    created_at: datetime
    links: dict[str, str]

    @classmethod
    def from_row(
        cls, study: Study, trials: list[Job], best: dict[str, tuple[float, int]]
    ) -> StudyOut:
        base = f"{API_PREFIX}/studies/{study.id}"
        out = [trial_out(t, best.get(t.id)) for t in trials]
        ranked = [t for t in out if t.objective is not None]
        sign = 1 if study.objective.get("mode", "min") == "min" else -1
        best_trial = min(ranked, key=lambda t: sign * t.objective) if ranked else None
        counts = Counter(t.status for t in trials)
        finished = sum(counts[s] for s in TERMINAL_STATES)
        return cls(
            id=study.id,
            name=study.name,
            status=study_status(study, counts, len(trials)),
            progress=StudyProgress(
                trials=len(trials),
                finished=finished,
                fraction=round(finished / len(trials), 6) if trials else 0.0,
                by_status={s: counts[s] for s in JOB_STATES if counts[s]},
            ),
            objective=study.objective,
            max_concurrent=study.max_concurrent,
            early_stopping=study.early_stopping,
            searches=(study.searches or {}).get("items", []),
            best_trial=best_trial,
            trials=out,
            created_at=utc(study.created_at),
            links={
                "self": base,
                "table": f"{base}/table",
                "csv": f"{base}/table.csv",
                "curves": f"{base}/curves.png",
                "cancel": f"{base}/cancel",
                "extend": f"{base}/extend",
            },
        )


def trial_out(job: Job, best: tuple[float, int] | None) -> TrialOut:
    return TrialOut(
        index=job.trial_index or 0,
        job_id=job.id,
        status=job.status,
        overrides=job.overrides or {},
        step=job.step or 0,
        max_steps=job.max_steps,
        objective=finite(best[0]) if best else None,
        link=f"{API_PREFIX}/jobs/{job.id}",
    )


def study_status(study: Study, counts: Counter, total: int) -> str:
    unfinished = total - sum(counts[s] for s in TERMINAL_STATES)
    if unfinished:
        return "cancelling" if study.cancel_requested else "running"
    if study.cancel_requested:
        return "cancelled"
    if total and counts["failed"] == total:
        return "failed"
    return "completed"


class StudyList(BaseModel):
    items: list[StudyOut]
