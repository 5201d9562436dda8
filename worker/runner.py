"""`JobRunner`: runs one claimed job in a pool child, wiring the parts of the worker.

claim (worker/claim.py) -> metric reporter + heartbeat thread (worker/reporter.py,
worker/heartbeat.py) -> the trainer, whose callbacks report metrics, register checkpoints
(`jobstore.checkpoints`, in the flush's transaction) and read the stop flag -> the end: the job
succeeds, is cancelled, or, when the worker shuts down, is handed back to the queue with its
claim uncounted (the next worker resumes it from the checkpoint written at the stop). Errors go
to worker/failures.py. Every status change is a `lease.release` (`jobstore.states.transition`).

torch and celif_core are imported inside the methods: this module is imported by the worker's
main process, which must never initialise CUDA.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from jobstore import states
from jobstore.artifacts import CorruptArtifact, MissingArtifact, artifact_store
from jobstore.checkpoints import apply_retention, list_checkpoints, register_checkpoint
from jobstore.db.models import Checkpoint, Job
from jobstore.files import checkpoint_prefix, init_key, init_sha256_key
from jobstore.settings import Settings
from worker import lease
from worker.claim import Claim, claim_job
from worker.failures import settle_error
from worker.heartbeat import Heartbeat
from worker.reporter import MetricReporter
from worker.stopping import LeaseLost, StopSignal

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    def __init__(self, job_id: str, settings: Settings):
        self.job_id = job_id
        self.settings = settings
        self.worker_id = worker_identity()
        self.stop = StopSignal()
        self.reporter: MetricReporter | None = None
        self._trainer = None
        self.store = artifact_store(settings)
        self._prefix = ""  # this attempt's checkpoint key prefix (set when training starts)

    def run(self) -> str:
        """Claim and train the job; returns what happened (for logs: state is in the database)."""
        try:
            claim = claim_job(self.settings, self.job_id, self.worker_id)
        except Exception:
            # Nothing was written (the claim's transaction rolled back): the job is still
            # queued, and the reaper re-sends it after `resend_queued_after_s`.
            log.exception("job %s: could not be claimed; it stays queued", self.job_id)
            return "claim_failed"
        if claim is None:
            return "skipped"
        self.reporter = MetricReporter(
            self.settings.database_url,
            self.job_id,
            self.worker_id,
            step=claim.step,
            latest=claim.latest_metrics,
        )
        beat = Heartbeat(self.settings, self.reporter, self.stop, on_shutdown=self.request_shutdown)
        beat.start()
        try:
            return self._train(claim)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker or the API owns it now", self.job_id)
            return "lease_lost"
        except Exception as exc:
            if self.stop.reason == "lease_lost":
                return "lease_lost"
            self._flush_quietly()
            return settle_error(exc, self.settings, self.job_id, self.worker_id, self.stop)
        finally:
            beat.close()

    def request_shutdown(self) -> None:
        """Stop at the next step with a checkpoint there, then hand the job back to the queue."""
        if self.stop.reason is not None:
            return
        if self._trainer is not None:
            self._trainer.checkpoint_on_stop = True
        self.stop.request("shutdown")

    # ------------------------------------------------------------------ training
    def _train(self, claim: Claim) -> str:
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
        spec = validate_spec(claim.spec, limits=self.settings.spec_limits)
        # The trainer writes into a local directory (the file in place on the local backend,
        # the cache on an object store); each checkpoint is put into the store before its row
        # is registered. On an object store each attempt has its own key prefix.
        self._prefix = checkpoint_prefix(self.settings, self.job_id, claim.attempt)
        checkpoint_dir = self.store.local_path(self._prefix)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        datasets = self.settings.datasets_dir
        if claim.dataset is not None:
            datasets = self._fetch_input(*claim.dataset, what="dataset").parent
        trainer = Trainer(
            spec,
            checkpoint_dir=checkpoint_dir,
            callbacks=_Callbacks(self),
            data_dirs=DataDirs(mnist=self.settings.mnist_dir, datasets=datasets),
        )
        trainer.setup(resume_from=claim.resume_from)
        progress: dict[str, Any] = {}
        if claim.resume_from is None and spec.init_from is not None:
            # No checkpoint of its own yet: start from the source's copy the API installed.
            # (A re-run after a kill finds its own checkpoints above and never re-inits.)
            init_file = self._fetch_input(
                init_key(self.job_id), self._init_sha256(), what="init_from checkpoint copy"
            )
            continued = trainer.init_from(init_file)
            log.info("job %s: init_from %s", self.job_id, "continued" if continued else "weights")
            if continued and trainer.best is not None:
                # The run's best so far is the source's until this job beats it (its trainer
                # carries the value): the job shows it, not an empty best.
                best = trainer.best
                progress["best_metrics"] = {f"val_{best['metric']}": best["value"], "step": best["step"]}  # fmt: skip
        self._trainer = trainer
        with self.reporter.transaction() as session:
            progress["device"] = _describe(getattr(trainer, "device", None))
            if not lease.heartbeat(session, self.job_id, self.worker_id, **progress):
                raise LeaseLost()
        result = trainer.train()
        if not self.reporter.flush():
            self.stop.lose_lease()
        return self._finish(result)

    def _fetch_input(self, key: str, sha256: str | None, *, what: str) -> Path:
        """A stored input of the job as a local file. Missing or corrupt is the job's own
        error (running it again reads the same bytes); an unreachable store propagates
        (StoreUnavailable, an OSError: a storage infrastructure retry)."""
        from celif_core.errors import TrainingError

        try:
            return self.store.fetch(key, sha256)
        except (MissingArtifact, CorruptArtifact) as exc:
            raise TrainingError(f"the {what} cannot be read: {exc}") from None

    def _init_sha256(self) -> str | None:
        """The sha256 the API stored beside the init_from copy (None for a job submitted
        before it did: that copy is read unchecked)."""
        try:
            return self.store.fetch(init_sha256_key(self.job_id), None).read_text().strip()
        except MissingArtifact:
            return None

    def _backend(self) -> str | None:
        # The model's backend_name is known after its first step.
        return _describe(getattr(getattr(self._trainer, "model", None), "backend_name", None))

    def _finish(self, result) -> str:
        if self.stop.reason == "lease_lost":
            raise LeaseLost()
        step = int(result.step)
        metrics = _jsonable(getattr(result, "metrics", None))
        telemetry = _jsonable(getattr(result, "telemetry", None) or {})
        values: dict[str, Any] = {
            "step": step,
            "latest_metrics": {**self.reporter.latest_metrics(), **metrics},
        }
        backend = getattr(result, "backend", None) or self._backend()
        if backend:
            values["backend"] = _describe(backend)
        if telemetry:
            values["telemetry"] = telemetry
        if result.status == "completed":
            status, event = "succeeded", {"step": step}
        elif self.stop.reason == "cancel":  # cancelled, or stopped early by its study
            status, reason = self._stop_outcome()
            event = {"step": step, "reason": reason}
        elif self.stop.reason == "shutdown":
            # Not the job's fault and not a lost worker: the claim is given back uncounted.
            status, event = "queued", {"step": step, "reason": "worker shut down"}
            values["attempts"] = Job.attempts - 1
        else:  # stopped without a reason we know: treat as infrastructure (re-queue)
            raise RuntimeError("training stopped unexpectedly")
        with self.reporter.transaction() as session:
            job = lease.release(session, self.job_id, self.worker_id, status, event=event, **values)
            if job is None:
                raise LeaseLost()
        log.info("job %s %s at step %s", self.job_id, status, step)
        if status == "queued":
            from jobstore.queue import enqueue_job

            enqueue_job(self.job_id)  # after the commit
            return "requeued"
        return status

    def _stop_outcome(self) -> tuple[str, str]:
        with self.reporter.transaction() as session:
            job = lease.load(session, self.job_id)
            return states.stop_outcome(job.stop_reason if job is not None else None)

    def _flush_quietly(self) -> None:
        try:
            self.reporter.flush()
        except Exception:
            log.exception("job %s: could not flush metrics after an error", self.job_id)

    # ------------------------------------------------------------------ checkpoints
    def register_checkpoint(self, info) -> None:
        """Record a checkpoint with every metric point up to its step, in one transaction, and
        apply retention: keep the newest `checkpoint_keep_last` plus the best one."""
        s = self.settings
        rel = f"{self._prefix}/{Path(info.path).name}"
        # Fenced: a worker that lost its lease uploads nothing (its keys are its attempt's own
        # on an object store, and its registration below would be refused anyway).
        with self.reporter.transaction() as session:
            if not lease.heartbeat(session, self.job_id, self.worker_id):
                self.stop.lose_lease()
                raise LeaseLost()
        # Visible under its key only once complete; a failure here (StoreUnavailable) is a
        # storage infrastructure error: the job is retried from its last registered one.
        self.store.put(rel, Path(info.path))
        metrics = _jsonable(getattr(info, "metrics", None))
        is_best = bool(getattr(info, "is_best", False))
        step = int(info.step)
        doomed: list[str] = []

        def record(session) -> None:
            row = Checkpoint(
                job_id=self.job_id,
                step=step,
                path=rel,
                size=int(info.size),
                sha256=str(info.sha256),
                metrics=metrics,
                is_best=is_best,
            )
            # A row of the same step (re-written after a resume) is replaced by this one; its
            # artifact goes too when it is under another key (another attempt's).
            doomed.extend(
                r.path
                for r in list_checkpoints(session, self.job_id)
                if r.step == step and r.path != rel
            )
            register_checkpoint(session, row)
            doomed.extend(
                apply_retention(
                    session,
                    self.job_id,
                    keep_last=s.checkpoint_keep_last,
                    keep_best=s.checkpoint_keep_best,
                    keep_path=rel,
                )
            )

        progress: dict[str, Any] = {"step": step}
        if self._backend():
            progress["backend"] = self._backend()
        if is_best:
            progress["best_metrics"] = {**metrics, "step": step}
        if not self.reporter.flush(also=record, **progress):
            self.stop.lose_lease()
            raise LeaseLost()
        if doomed:  # after the commit: a crash before it keeps every artifact
            try:
                self.store.delete(doomed)
            except OSError:
                log.warning("job %s: could not delete old checkpoints %s", self.job_id, doomed)


class _Callbacks:
    """What the trainer calls. Cheap on the training thread: appends to a buffer and reads a
    flag; database writes happen in the heartbeat thread (and at checkpoints and the end)."""

    def __init__(self, runner: JobRunner):
        self.runner = runner

    def on_metrics(self, points) -> None:
        self.runner.reporter.add_points([dict(p) for p in points])

    def on_step(self, step: int, max_steps: int) -> None:
        self.runner.reporter.set_step(step)

    def on_checkpoint(self, info) -> None:
        self.runner.register_checkpoint(info)

    def should_stop(self) -> bool:
        return self.runner.stop.is_set()


def _describe(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:40]


def _jsonable(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics as JSON values (tensors and numpy scalars become floats)."""
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
