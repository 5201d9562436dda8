"""The Celery app. Imports no torch: the API imports this module to send tasks.

Broker from settings: Redis in production, kombu's filesystem transport under
`settings.broker_dir` in the embedded default. Job state lives in the database, so there is no
result backend. One job per worker process (one per GPU): concurrency 1, prefetch 1, late acks and
reject-on-worker-lost so a message is never lost with a worker that dies mid-job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from celery import Celery, signals

from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

TASK_NAME = "celif.run_job"
QUEUE = "celif"

# A training job holds its (late-acked) message for its whole run. Redis re-delivers an unacked
# message after the visibility timeout; a re-delivery is harmless (the claim is idempotent and a
# live lease is never taken over) but pointless, so the timeout is far longer than any checkpoint
# interval. Worker loss is detected by the heartbeat reaper long before this.
VISIBILITY_TIMEOUT_S = 12 * 3600


def broker_transport_options(settings: Settings) -> dict:
    if settings.embedded:
        root = settings.broker_dir.resolve()
        folders = {
            "data_folder_in": root / "queue",
            "data_folder_out": root / "queue",  # one machine: producers and consumers share it
            "processed_folder": root / "processed",
            "control_folder": root / "control",
        }
        for path in folders.values():
            path.mkdir(parents=True, exist_ok=True)
        return {**{k: str(v) for k, v in folders.items()}, "store_processed": False}
    return {"visibility_timeout": VISIBILITY_TIMEOUT_S}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker = settings.broker_url
    if broker in ("filesystem://", "filesystem:"):
        broker = "filesystem://localhost//"  # same transport; spares kombu's "no hostname" warning
    app = Celery("celif", broker=broker, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # A fresh pool process per job: no torch/CUDA state leaks from one job into the next.
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # The filesystem transport has no broadcast worth using; Redis keeps remote control.
        worker_enable_remote_control=not settings.embedded,
    )
    return app


_app: Celery | None = None
_app_lock = threading.Lock()


def get_celery_app() -> Celery:
    """The process's Celery app, made from the settings on first use (not at import, so that
    importing this module creates no broker folders and `--data-dir` can still apply)."""
    global _app
    with _app_lock:
        if _app is None:
            _app = make_celery()
            globals()["celery_app"] = _app
        return _app


def __getattr__(name: str) -> Celery:
    # `from worker.app import celery_app` and `celery -A worker.app` (which looks for `app` /
    # `celery`) both land here until the app exists.
    if name in ("celery_app", "app", "celery"):
        return get_celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------ worker process hooks
@signals.worker_process_init.connect
def _fresh_db_pool(**_kwargs) -> None:
    """A forked pool process must not share the parent's pooled DB connections."""
    from service.db.session import get_engine

    get_engine(get_settings().database_url).dispose(close=False)


ORPHAN_POLL_S = 1.0


@signals.worker_process_init.connect
def _exit_with_the_worker(**_kwargs) -> None:
    """A pool child whose worker main process died (kill -9, a crash) exits too, instead of
    living on idle forever: its job, if any, is re-queued by the reaper as for a lost worker."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


_reaper_started = threading.Event()


@signals.worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    """Every worker (its main process) runs the stale-lease reaper in a daemon thread."""
    if _reaper_started.is_set():
        return
    _reaper_started.set()
    from worker.reaper import start_reaper_thread

    start_reaper_thread(get_settings())
    log.info("reaper started in worker %s:%s", socket.gethostname(), os.getpid())


# Sent by the main process to its pool children on a warm shutdown (see below).
SHUTDOWN_SIGNAL = signal.SIGUSR2  # SIGUSR1 is billiard's soft time limit


@signals.worker_shutting_down.connect
def _hand_back_running_jobs(how: str | None = None, **_kwargs) -> None:
    """Warm shutdown (SIGTERM, `docker compose stop`): instead of training to the end (hours)
    or being killed mid-step, the job in the pool child writes a checkpoint at its current step
    and goes back to the queue, where the next worker resumes it (worker/tasks.py)."""
    if how != "Warm":
        return
    from celery.worker import state

    # Only the children running a job have the hand-back handler (worker/tasks.py); an idle
    # child still has billiard's exit handler for this signal, and signalling it made the
    # pool's own SIGTERM a second terminate signal: "exited with 'exitcode 70'", an ERROR on
    # every clean stop. Idle children leave by the pool's normal close.
    for pid in {r.worker_pid for r in list(state.active_requests) if r.worker_pid}:
        try:
            os.kill(pid, SHUTDOWN_SIGNAL)
        except ProcessLookupError:
            pass
