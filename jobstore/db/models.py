"""Tables. Job state lives here (not in Celery's result backend): the database is the source of
truth for status, metrics (and so the SSE stream), checkpoints and datasets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints so Alembic migrations are stable across databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite autoincrement needs INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

# `waiting`: a study's trial held back by the study's `max_concurrent` (no message sent yet);
# `stopped_early`: a trial its study's early stopping ended (curve and checkpoints kept).
JOB_STATES = ("waiting", "queued", "running", "succeeded", "failed", "cancelled", "stopped_early")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "stopped_early")
STOP_REASONS = ("cancel", "early_stop")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """Bearer tokens, stored as sha256 of the token (tokens are 256-bit random strings)."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    task_name: Mapped[str] = mapped_column(String(40))
    neuron: Mapped[str] = mapped_column(String(40))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # validated, defaults filled
    status: Mapped[str] = mapped_column(String(16), default="queued")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)

    step: Mapped[int] = mapped_column(Integer, default=0)  # last completed training step
    max_steps: Mapped[int] = mapped_column(Integer)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    best_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    telemetry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # firing rates, energy
    backend: Mapped[str | None] = mapped_column(String(40), default=None)  # neuron kernel used
    device: Mapped[str | None] = mapped_column(String(40), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    # Lease: the worker that holds the job heartbeats; a stale lease is reaped and re-queued.
    worker_id: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Why the stop was requested ("cancel" or "early_stop"); the job ends as cancelled or
    # stopped_early accordingly. None with cancel_requested means "cancel".
    stop_reason: Mapped[str | None] = mapped_column(String(16), default=None)

    # A study's trial: its study, its index there and the spec fields the study set.
    study_id: Mapped[str | None] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), default=None, index=True
    )
    trial_index: Mapped[int | None] = mapped_column(Integer, default=None)
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Study(Base):
    """A base spec and a search space; its trials are ordinary jobs (`Job.study_id`). Status,
    progress and best trial are derived from the trials, never stored."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_owner_created", "owner_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # the base spec as submitted
    searches: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"items": [search, ...]} (extends)
    objective: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"metric": ..., "mode": ...}
    max_concurrent: Mapped[int] = mapped_column(Integer)
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # ASHA decisions taken: {job_id: {rung: "continue" | "stop"}}
    rung_decisions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    trial_count: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """One ordered stream per job: metric points and status/checkpoint events.

    `id` is global and increasing, so it serves as the metric `seq`, the `after=` cursor and the
    SSE event id (`Last-Event-ID`) at once.
    """

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "metric" | "status" | "checkpoint"
    # metric points
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    epoch: Mapped[float | None] = mapped_column(Float, default=None)
    split: Mapped[str | None] = mapped_column(String(16), default=None)
    name: Mapped[str | None] = mapped_column(String(64), default=None)
    value: Mapped[float | None] = mapped_column(Float, default=None)
    # status / checkpoint payloads
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    time: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))  # relative to settings.storage_dir
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(1000))  # relative to settings.datasets_dir
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    num_sequences: Mapped[int] = mapped_column(Integer)
    seq_len: Mapped[int] = mapped_column(Integer)
    input_size: Mapped[int] = mapped_column(Integer)
    output_size: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # "classification" | "regression"
    target: Mapped[str] = mapped_column(String(16))  # "per_sequence" | "per_step"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UploadedCheckpoint(Base):
    """A checkpoint file a user uploaded (POST /api/v1/checkpoints) to start jobs from."""

    __tablename__ = "uploaded_checkpoints"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(1000))  # relative to settings.storage_dir
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker process as it last announced itself (jobstore/workers.py): what it consumes and
    when its main process last refreshed the row. Not a lease: jobs keep their own heartbeat."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery node name
    host: Mapped[str] = mapped_column(String(255), index=True)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON)  # queue kinds: gpu, cpu, any
    devices: Mapped[list[str]] = mapped_column(JSON)  # cpu, cuda
    running: Mapped[int] = mapped_column(Integer, default=0)  # jobs in its pool right now
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)  # a clean shutdown
