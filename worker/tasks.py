"""The training task `celif.run_job`.

The task argument is the job id only; everything else is read from the database. This module is
imported by the worker's main process, which must never initialise CUDA: torch and celif_core are
imported inside the task body, i.e. in the pool child that runs the job.

Guarantees (DESIGN.md §6), and where they live:
- idempotent claim: `lease.claim` (conditional UPDATE, rowcount-checked); a duplicate or
  re-delivered message for a job that is running under a live lease or is finished is a no-op;
- resume: from the job's newest checkpoint row whose file is intact; metric events past that
  step are deleted in the claim's transaction, so the re-run steps are not stored twice;
- heartbeat + cancel: `_Heartbeat` thread refreshes the lease, polls `cancel_requested` and
  flushes metric batches; `should_stop` reads an in-memory flag (checked every step);
- a job's own error (TrainingError, bad data, bad spec, out of
  memory) fails it with the reason, no retry;
  anything else is infrastructure: re-queued after an exponential backoff with jitter (the
  worker holds the lease meanwhile), counted per cause in the status events, and failed once
  the first such error is older than `infra_retry_budget_s`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals
from sqlalchemy import delete, select

from jobstore import states
from jobstore.datasets import job_dataset_error
from jobstore.db.models import Checkpoint, Job, JobEvent, utcnow
from jobstore.db.session import get_engine, session_scope
from jobstore.events import append_event, append_metric_points
from jobstore.files import job_checkpoint_dir
from jobstore.queue import TASK_NAME
from jobstore.settings import Settings, get_settings
from worker import lease
from worker.app import SHUTDOWN_SIGNAL, celery_app

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """This worker no longer holds the job (reaped after a stall, or cancelled by the API)."""


# Set in a pool child when its worker shuts down warmly: the running job checkpoints and
# re-queues itself. (Process-level by nature: it is about this process, not about one job.)
_shutdown_requested = threading.Event()


@signals.task_prerun.connect
def _install_shutdown_handler(**_kwargs) -> None:
    # As the job starts, in the pool child's main thread: not at worker_process_init, because
    # billiard then resets every terminate-like signal (SHUTDOWN_SIGNAL included) to its own
    # exit handler, and the job would die mid-step instead of checkpointing.
    signal.signal(SHUTDOWN_SIGNAL, lambda *_: _shutdown_requested.set())


def job_error_message(exc: BaseException) -> str:
    from celif_core.errors import is_out_of_memory

    if is_out_of_memory(exc):
        # torch's allocator message is long (a C++ frame); its first line has the size asked for.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return (
            f"out of memory: {first}; the job needs more memory than this worker has "
            f"(lower batch_size, eval_batch_size, hidden, te_length or the sequence length)"
        )
    return str(exc)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Train one job; returns what happened (for logs only: state lives in the database)."""
    return JobRunner(job_id, get_settings()).run()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _metric_key(point: dict[str, Any]) -> str:
    split = point.get("split")
    return f"{split}_{point['name']}" if split else str(point["name"])


def _jsonable(metrics: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [float(x) if isinstance(x, (int, float)) else x for x in v]
        elif isinstance(v, dict):
            out[k] = _jsonable(v)
        else:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                out[k] = str(v)
    return out


class JobRunner:
    def __init__(self, job_id: str, settings: Settings):
        self.job_id = job_id
        self.settings = settings
        self.url = settings.database_url
        self.worker_id = worker_identity()
        self.stop = threading.Event()
        self.stop_reason: str | None = None  # "cancel" | "lease_lost" | "shutdown"
        self._trainer = None
        self._buffer: list[dict[str, Any]] = []
        self._buffer_lock = threading.Lock()
        self._db_lock = threading.Lock()  # orders metric flushes and checkpoint registration
        self._latest: dict[str, Any] = {}
        self._step = 0
        self._dirty = False
        self._model = None
        self._last_step_at: float | None = None
        self.step_time: float | None = None  # seconds per training step (moving average)

    def request_shutdown(self) -> None:
        """Stop at the next step with a checkpoint there, then hand the job back to the queue."""
        if self.stop_reason is not None:
            return
        if self._trainer is not None:
            self._trainer.checkpoint_on_stop = True
        self.stop_reason = "shutdown"
        self.stop.set()

    def _backend(self) -> str | None:
        return _describe(getattr(self._model, "backend_name", None))

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> str:
        try:
            claimed = self._claim()
        except Exception:
            # Nothing was written (the claim's transaction rolled back): the job is still
            # queued, and the reaper re-sends it after `resend_queued_after_s`.
            log.exception("job %s: could not be claimed; it stays queued", self.job_id)
            return "claim_failed"
        if claimed is None:
            return "skipped"
        spec, resume = claimed
        beat = _Heartbeat(self)
        beat.start()
        try:
            outcome = self._train(spec, resume)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker or the API owns it now", self.job_id)
            return "lease_lost"
        except Exception as exc:
            if self.stop_reason == "lease_lost":
                return "lease_lost"
            return self._on_error(exc)
        finally:
            beat.stop()
        return outcome

    def _claim(self) -> tuple[dict[str, Any], Path | None] | None:
        s = self.settings
        with session_scope(self.url) as session:
            job = lease.claim(session, self.job_id, self.worker_id, s.stale_after_s)
            if job is None:
                current = lease.load(session, self.job_id)
                log.info(
                    "job %s not claimed (%s); nothing to do",
                    self.job_id,
                    "gone" if current is None else current.status,
                )
                return None
            if job.cancel_requested:
                lease.release(
                    session, job.id, self.worker_id, "cancelled", event={"reason": "cancelled"}
                )
                return None
            if job.attempts > s.max_infra_retries + 1:
                lease.release(
                    session,
                    job.id,
                    self.worker_id,
                    "failed",
                    error=f"gave up after {job.attempts - 1} attempts (worker lost each time)",
                    event={"error": "retries exhausted", "attempts": job.attempts - 1},
                )
                return None
            refused = job_dataset_error(session, job)
            if refused is not None:  # the owner must own the dataset the spec names, always
                lease.release(
                    session,
                    job.id,
                    self.worker_id,
                    "failed",
                    error=refused,
                    event={"error": refused, "kind": "DataError"},
                )
                return None
            resume = self._pick_checkpoint(session)
            resume_step = resume[1] if resume else 0
            # The stored series must have no duplicates: the steps after the checkpoint re-run.
            session.execute(
                delete(JobEvent).where(
                    JobEvent.job_id == job.id,
                    JobEvent.kind == "metric",
                    JobEvent.step > resume_step,
                )
            )
            if resume is None:
                session.execute(
                    delete(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "metric")
                )
            job.step = resume_step
            self._step = resume_step
            self._latest = dict(job.latest_metrics or {})
            states.record_status(
                session,
                job,
                worker=self.worker_id,
                attempt=job.attempts,
                resumed_from_step=resume_step if resume else None,
            )
            spec = dict(job.spec)
        log.info("job %s claimed by %s (attempt %s)", self.job_id, self.worker_id, job.attempts)
        return spec, (resume[0] if resume else None)

    def _pick_checkpoint(self, session) -> tuple[Path, int] | None:
        """The newest checkpoint whose file is intact; rows of broken ones are dropped."""
        rows = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == self.job_id)
            .order_by(Checkpoint.step.desc())
        ).all()
        for row in rows:
            path = Path(self.settings.storage_dir) / row.path
            try:
                if _sha256(path) == row.sha256:
                    return path, row.step
            except (FileNotFoundError, IsADirectoryError):
                pass
            # Any other OSError (storage not mounted, a path component that is not a directory,
            # EIO) means the storage is unavailable, not the checkpoint gone: it propagates, the
            # claim rolls back, and the job stays queued with its rows for a later claim.
            log.warning(
                "job %s: checkpoint %s (step %s) is missing or corrupt",
                self.job_id,
                row.id,
                row.step,
            )
            session.delete(row)
        return None

    # ------------------------------------------------------------------ training
    def _train(self, spec_dict: dict[str, Any], resume: Path | None) -> str:
        # Heavy imports here, in the pool process: the worker's main process never touches CUDA.
        from celif_core.kernels import tune_allocator
        from celif_core.spec import validate_spec
        from celif_core.trainer import DataDirs, Trainer

        # This pool process trains one job and exits (max_tasks_per_child=1): let glibc keep
        # large freed blocks instead of page-faulting every [T, B, N] tensor in anew each step.
        tune_allocator()
        if self.settings.torch_threads is not None:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        spec = validate_spec(spec_dict, limits=self.settings.spec_limits)
        checkpoint_dir = job_checkpoint_dir(self.settings, self.job_id, create=True)
        trainer = Trainer(
            spec,
            checkpoint_dir=checkpoint_dir,
            callbacks=_Callbacks(self),
            data_dirs=DataDirs(mnist=self.settings.mnist_dir, datasets=self.settings.datasets_dir),
        )
        trainer.setup(resume_from=resume)
        if resume is None and spec.init_from is not None:
            # No checkpoint of its own yet: start from the source's copy the API installed.
            # (A re-run after a kill finds its own checkpoints above and never re-inits.)
            from celif_core.errors import TrainingError
            from jobstore.files import INIT_FILE

            if not (checkpoint_dir / INIT_FILE).is_file():
                raise TrainingError(f"the init_from checkpoint copy {INIT_FILE} is missing")
            continued = trainer.init_from(checkpoint_dir / INIT_FILE)
            log.info("job %s: init_from %s", self.job_id, "continued" if continued else "weights")
        self._model = trainer.model  # its backend_name is known after the first step
        self._trainer = trainer
        info = {"device": _describe(getattr(trainer, "device", None))}
        with self._db_lock, session_scope(self.url) as session:
            if not lease.heartbeat(session, self.job_id, self.worker_id, **info):
                raise LeaseLost()
        result = trainer.train()
        self._flush(final=True)
        return self._finish(result, trainer)

    def _finish(self, result, trainer) -> str:
        if self.stop_reason == "lease_lost":
            raise LeaseLost()
        metrics = _jsonable(getattr(result, "metrics", None))
        latest = {**self._latest, **metrics}
        telemetry = _jsonable(getattr(result, "telemetry", None) or {})
        values: dict[str, Any] = {"step": int(result.step), "latest_metrics": latest}
        backend = getattr(result, "backend", None) or self._backend()
        if backend:
            values["backend"] = _describe(backend)
        if telemetry:
            values["telemetry"] = telemetry
        if result.status == "completed":
            status, event = "succeeded", {"step": int(result.step)}
        elif self.stop_reason == "cancel":
            status, event = "cancelled", {"step": int(result.step), "reason": "cancelled"}
        elif self.stop_reason == "shutdown":
            # Not the job's fault and not a lost worker: the claim is given back uncounted.
            status, event = "queued", {"step": int(result.step), "reason": "worker shut down"}
            values["attempts"] = Job.attempts - 1
        else:  # stopped without a reason we know: treat as infrastructure (re-queue)
            raise RuntimeError("training stopped unexpectedly")
        with self._db_lock, session_scope(self.url) as session:
            job = lease.release(session, self.job_id, self.worker_id, status, event=event, **values)
            if job is None:
                raise LeaseLost()
        log.info("job %s %s at step %s", self.job_id, status, result.step)
        if status == "queued":
            from jobstore.queue import enqueue_job

            enqueue_job(self.job_id)  # after the commit
            return "requeued"
        return status

    def _on_error(self, exc: Exception) -> str:
        from celif_core.errors import DataError, TrainingError, is_out_of_memory
        from celif_core.spec import SpecError

        # Out of memory is the job's own error: a retry would ask for the same memory again.
        job_error = isinstance(exc, (TrainingError, DataError, SpecError)) or is_out_of_memory(exc)
        s = self.settings
        try:
            self._flush(final=True)
        except Exception:
            log.exception("job %s: could not flush metrics after an error", self.job_id)
        try:
            with session_scope(self.url) as session:
                current = lease.load(session, self.job_id)
                if current is None or current.worker_id != self.worker_id:
                    return "lease_lost"
                if job_error:
                    log.warning("job %s failed: %s", self.job_id, exc)
                    lease.release(
                        session,
                        self.job_id,
                        self.worker_id,
                        "failed",
                        error=job_error_message(exc),
                        event={"error": str(exc), "kind": type(exc).__name__},
                    )
                    return "failed"
                cause = infra_cause(exc)
                reason = f"{type(exc).__name__}: {exc}"
                history = _infra_history(session, self.job_id)
                counts = dict(history.counts)
                counts[cause] = counts.get(cause, 0) + 1
                first = history.first_at or utcnow()
                elapsed = (utcnow() - first).total_seconds()
                log.exception(
                    "job %s: infrastructure error (%s; retry %d, %.0f s since the first)",
                    self.job_id,
                    cause,
                    history.retries + 1,
                    elapsed,
                )
                if elapsed > s.infra_retry_budget_s:
                    error = (
                        f"infrastructure errors for {elapsed:.0f} s, over "
                        f"infra_retry_budget_s={s.infra_retry_budget_s:g} (retries by cause: "
                        f"{counts}); last: {reason}"
                    )
                    lease.release(
                        session,
                        self.job_id,
                        self.worker_id,
                        "failed",
                        error=error,
                        event={"error": reason, "cause": cause, "counts": counts},
                    )
                    return "failed"
            delay = backoff_delay(history.retries, s)
            # Wait here, holding the lease (the heartbeat thread keeps it fresh and still sees a
            # cancel), so the retry comes after the backoff; then hand the job back uncounted:
            # this bound is the time budget, not the worker-loss attempts.
            self.stop.wait(delay)
            with session_scope(self.url) as session:
                if self.stop_reason == "cancel":
                    lease.release(
                        session,
                        self.job_id,
                        self.worker_id,
                        "cancelled",
                        event={"reason": "cancelled"},
                    )
                    return "cancelled"
                job = lease.release(
                    session,
                    self.job_id,
                    self.worker_id,
                    "queued",
                    attempts=Job.attempts - 1,
                    event={
                        "reason": INFRA_RETRY_REASON,
                        "error": reason,
                        "cause": cause,
                        "retry": history.retries + 1,
                        "counts": counts,
                        "first_error_at": first.isoformat(),
                        "backoff_s": round(delay, 3),
                    },
                )
                if job is None:
                    return "lease_lost"
        except Exception:
            # The database itself is unreachable: leave the lease to go stale; the reaper
            # re-queues (or fails) the job once the database answers again.
            log.exception(
                "job %s: could not record the error; leaving it to the reaper", self.job_id
            )
            raise
        from jobstore.queue import enqueue_job

        enqueue_job(self.job_id)  # after the commit: the row is `queued` before its message
        return "requeued"

    # ------------------------------------------------------------------ reporting
    def add_points(self, points: list[dict[str, Any]]) -> None:
        with self._buffer_lock:
            self._buffer.extend(points)
            for p in points:
                if p.get("value") is not None:
                    self._latest[_metric_key(p)] = float(p["value"])
            self._dirty = True

    def set_step(self, step: int) -> None:
        now = time.monotonic()
        if self._last_step_at is not None:  # moving average of the step time
            dt = now - self._last_step_at
            self.step_time = dt if self.step_time is None else 0.8 * self.step_time + 0.2 * dt
        self._last_step_at = now
        self._step = int(step)
        self._dirty = True

    def _take(self) -> list[dict[str, Any]]:
        with self._buffer_lock:
            points, self._buffer = self._buffer, []
            self._dirty = False
            return points

    def _restore(self, points: list[dict[str, Any]]) -> None:
        with self._buffer_lock:
            self._buffer[:0] = points
            self._dirty = True

    def _flush(self, *, final: bool = False) -> bool:
        """Write buffered metric points + progress and refresh the lease; False if lease lost."""
        with self._db_lock:
            points = self._take()
            try:
                with session_scope(self.url) as session:
                    ok = lease.heartbeat(
                        session,
                        self.job_id,
                        self.worker_id,
                        step=self._step,
                        latest_metrics=dict(self._latest),
                    )
                    if not ok:
                        session.rollback()
                        return False
                    append_metric_points(session, self.job_id, points)
            except Exception:
                self._restore(points)
                raise
        return True

    def register_checkpoint(self, info) -> None:
        """Record a checkpoint (with every metric point up to its step, in one transaction) and
        apply retention: keep the newest `checkpoint_keep_last` plus the best one."""
        s = self.settings
        storage = Path(s.storage_dir).resolve()
        path = Path(info.path).resolve()
        rel = path.relative_to(storage).as_posix()
        metrics = _jsonable(getattr(info, "metrics", None))
        is_best = bool(getattr(info, "is_best", False))
        step = int(info.step)
        doomed: list[Path] = []
        with self._db_lock:
            points = self._take()
            try:
                with session_scope(self.url) as session:
                    values: dict[str, Any] = {"step": step, "latest_metrics": dict(self._latest)}
                    if self._backend():
                        values["backend"] = self._backend()
                    if is_best:
                        values["best_metrics"] = {**metrics, "step": step}
                    if not lease.heartbeat(session, self.job_id, self.worker_id, **values):
                        session.rollback()
                        self.stop_reason = "lease_lost"
                        self.stop.set()
                        raise LeaseLost()
                    append_metric_points(session, self.job_id, points)
                    rows = session.scalars(
                        select(Checkpoint).where(Checkpoint.job_id == self.job_id)
                    ).all()
                    for row in rows:
                        if row.step == step:  # re-written after a resume: replace the row
                            session.delete(row)
                        elif is_best and row.is_best:
                            row.is_best = False
                    session.flush()
                    row = Checkpoint(
                        job_id=self.job_id,
                        step=step,
                        path=rel,
                        size=int(info.size),
                        sha256=str(info.sha256),
                        metrics=metrics,
                        is_best=is_best,
                    )
                    session.add(row)
                    session.flush()
                    append_event(
                        session,
                        self.job_id,
                        "checkpoint",
                        {"id": row.id, "step": step, "metrics": metrics, "is_best": is_best},
                    )
                    doomed = self._retention(session, rel)
            except LeaseLost:
                raise
            except Exception:
                self._restore(points)
                raise
        for f in doomed:
            try:
                f.unlink(missing_ok=True)
            except OSError:
                log.warning("job %s: could not delete old checkpoint %s", self.job_id, f)

    def _retention(self, session, keep_path: str) -> list[Path]:
        s = self.settings
        rows = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == self.job_id)
            .order_by(Checkpoint.step.desc())
        ).all()
        keep = {r.id for r in rows[: s.checkpoint_keep_last]}
        if s.checkpoint_keep_best:
            keep |= {r.id for r in rows if r.is_best}
        kept_paths = {r.path for r in rows if r.id in keep} | {keep_path}
        doomed = []
        for r in rows:
            if r.id not in keep:
                session.delete(r)
                if r.path not in kept_paths:  # a trainer may reuse a file name (e.g. best.st)
                    doomed.append(Path(s.storage_dir) / r.path)
        return doomed


def _describe(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:40]


class _Callbacks:
    """What the trainer calls. Cheap on the training thread: appends to a buffer and reads a
    flag; database writes happen in the heartbeat thread (and at checkpoints and the end)."""

    def __init__(self, runner: JobRunner):
        self.runner = runner

    def on_metrics(self, points) -> None:
        self.runner.add_points([dict(p) for p in points])

    def on_step(self, step: int, max_steps: int) -> None:
        self.runner.set_step(step)

    def on_checkpoint(self, info) -> None:
        self.runner.register_checkpoint(info)

    def should_stop(self) -> bool:
        return self.runner.stop.is_set()


MIN_POLL_S = 0.02


class _Heartbeat:
    """Refreshes the lease every `heartbeat_interval_s`, polls `cancel_requested` every
    `cancel_poll_interval_s`, and flushes metric batches every `metrics_flush_interval_s`."""

    def __init__(self, runner: JobRunner):
        self.runner = runner
        self._done = threading.Event()
        self._conn = None
        self._poll = select(Job.cancel_requested, Job.status, Job.worker_id).where(
            Job.id == runner.job_id
        )
        self._thread = threading.Thread(
            target=self._loop, name=f"heartbeat-{runner.job_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        self._close()

    def _loop(self) -> None:
        r, s = self.runner, self.runner.settings
        base = min(s.cancel_poll_interval_s, s.heartbeat_interval_s, s.metrics_flush_interval_s)
        last_beat = last_flush = time.monotonic()
        # Cancellation is seen within one step: poll at least once per training step (never
        # more often than MIN_POLL_S: one indexed single-row SELECT each time).
        while not self._done.wait(max(MIN_POLL_S, min(base, r.step_time or base))):
            now = time.monotonic()
            try:
                if _shutdown_requested.is_set():
                    r.request_shutdown()
                self._poll_cancel()
                due_flush = now - last_flush >= s.metrics_flush_interval_s and r._dirty
                due_beat = now - last_beat >= s.heartbeat_interval_s
                if due_flush or due_beat:
                    if not r._flush():
                        r.stop_reason = "lease_lost"
                        r.stop.set()
                        return
                    last_beat = last_flush = now
            except Exception:
                # DB hiccup: keep training and retry; if it lasts past stale_after_s the reaper
                # takes the job and our next heartbeat finds the lease lost.
                log.exception("job %s: heartbeat failed", r.job_id)

    def _poll_cancel(self) -> None:
        """One indexed single-row SELECT on a connection kept open in autocommit mode (no
        session or transaction per poll: this runs up to once per training step)."""
        r = self.runner
        if self._conn is None:
            engine = get_engine(r.url)
            self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            row = self._conn.execute(self._poll).first()
        except Exception:
            self._close()
            raise
        if row is None or row.status != "running" or row.worker_id != r.worker_id:
            r.stop_reason = "lease_lost"  # deleted, cancelled by the API, or reaped
            r.stop.set()
        elif row.cancel_requested and r.stop_reason is None:
            r.stop_reason = "cancel"
            r.stop.set()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the poll connection failed", exc_info=True)
            self._conn = None


# ----------------------------------------------------------------------------- infra retries
INFRA_RETRY_REASON = "infrastructure error, retrying"


def infra_cause(exc: BaseException) -> str:
    """What failed, for counting retries: storage, database, device or other."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, (OperationalError, DBAPIError)):
        return "database"
    if isinstance(exc, OSError):
        return "storage"
    text = str(exc)
    if "CUDA" in text or "cuda" in text or "device" in text.lower():
        return "device"
    return "other"


def backoff_delay(retries: int, settings: Settings) -> float:
    """Seconds before retry number `retries + 1`: exponential, capped, with full jitter in
    [0.5, 1] of the step (several jobs hit by one outage do not retry in lockstep)."""
    step = min(settings.infra_retry_max_delay_s, settings.infra_retry_base_s * 2.0**retries)
    return step * random.uniform(0.5, 1.0)


class _InfraHistory:
    def __init__(self, retries: int, counts: dict[str, int], first_at):
        self.retries, self.counts, self.first_at = retries, counts, first_at


def _infra_history(session, job_id: str) -> _InfraHistory:
    """The job's earlier infrastructure retries, from its status events (kept in the database,
    so the count and the time budget survive re-queues and worker changes)."""
    rows = session.execute(
        select(JobEvent.data, JobEvent.time)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
        .order_by(JobEvent.id)
    ).all()
    retries, counts, first = 0, {}, None
    for payload, created_at in rows:
        if (payload or {}).get("reason") != INFRA_RETRY_REASON:
            continue
        retries += 1
        cause = payload.get("cause", "other")
        counts[cause] = counts.get(cause, 0) + 1
        if first is None:
            first = _aware(created_at)
    return _InfraHistory(retries, counts, first)


def _aware(value):
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
