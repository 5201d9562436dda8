"""The training task `celif.run_job`, and the signal handler that hands a job back.

The task argument is the job id only; everything else is read from the database. This module is
imported by the worker's main process, which must never initialise CUDA: torch and celif_core are
imported inside the task body, i.e. in the pool child that runs the job.

Guarantees (DESIGN.md §6), and where they live:
- idempotent claim: `lease.claim` (conditional UPDATE, rowcount-checked), in worker/claim.py;
  a duplicate or re-delivered message for a job that is running under a live lease or is
  finished is a no-op;
- resume: from the job's newest checkpoint row whose file is intact; metric events past that
  step are deleted in the claim's transaction, so the re-run steps are not stored twice
  (worker/claim.py);
- heartbeat + cancel: the `Heartbeat` thread (worker/heartbeat.py) refreshes the lease, polls
  `cancel_requested` and flushes the `MetricReporter`'s batches (worker/reporter.py);
  `should_stop` reads an in-memory flag (worker/stopping.py, checked every step);
- checkpoints: registered with every metric point up to their step in one transaction, and
  retention applied (`jobstore.checkpoints`, called by worker/runner.py);
- warm shutdown: the running job checkpoints and goes back to the queue uncounted (below, and
  `JobRunner` in worker/runner.py);
- a job's own error (TrainingError, bad data, bad spec, out of memory) fails it with the reason,
  no retry; anything else is infrastructure: re-queued after an exponential backoff with jitter
  (the worker holds the lease meanwhile), counted per cause in the status events, and failed
  once the first such error is older than `infra_retry_budget_s` (worker/failures.py).
"""

from __future__ import annotations

import signal

from celery import signals

from jobstore.queue import TASK_NAME
from jobstore.settings import get_settings
from worker.app import SHUTDOWN_SIGNAL, celery_app
from worker.runner import JobRunner
from worker.stopping import shutdown_requested


@signals.task_prerun.connect
def _install_shutdown_handler(**_kwargs) -> None:
    # As the job starts, in the pool child's main thread: not at worker_process_init, because
    # billiard then resets every terminate-like signal (SHUTDOWN_SIGNAL included) to its own
    # exit handler, and the job would die mid-step instead of checkpointing.
    signal.signal(SHUTDOWN_SIGNAL, lambda *_: shutdown_requested.set())


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Train one job; returns what happened (for logs only: state lives in the database)."""
    return JobRunner(job_id, get_settings()).run()
