"""The workers' Celery app and its process hooks. Imports no torch (the task module, which
does, is loaded by the worker only).

The broker configuration is the queue's (jobstore/queue.py): Redis in production, kombu's
filesystem transport under `settings.broker_dir` in the embedded default; no result backend (job
state lives in the database); one job per worker process (one per GPU): concurrency 1, prefetch 1,
late acks and reject-on-worker-lost so a message is never lost with a worker that dies mid-job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from celery import Celery, signals

from jobstore.queue import make_celery
from jobstore.settings import get_settings

log = logging.getLogger(__name__)

_app: Celery | None = None
_app_lock = threading.Lock()


def get_celery_app() -> Celery:
    """The process's Celery app, made from the settings on first use (not at import, so that
    importing this module creates no broker folders and `--data-dir` can still apply)."""
    global _app
    with _app_lock:
        if _app is None:
            _app = make_celery(include=("worker.tasks",))
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
    from jobstore.db.session import get_engine

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
_announced: list = []  # this process's registry identity, once announced

# `celif worker` sets this to the devices it probed (worker/devices.py) before the worker
# starts; a worker started otherwise (`celery -A worker.app worker`) probes in the announcer.
DEVICES_CONF_KEY = "celif_devices"


@signals.worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    """Every worker (its main process) runs the stale-lease reaper in a daemon thread, and
    announces itself in the worker registry (worker/registry.py) from another."""
    if _reaper_started.is_set():
        return
    _reaper_started.set()
    from worker.reaper import start_reaper_thread

    settings = get_settings()
    start_reaper_thread(settings)
    log.info("reaper started in worker %s:%s", socket.gethostname(), os.getpid())
    if sender is not None:
        threading.Thread(
            target=_announce, args=(sender, settings), name="celif-announce-start", daemon=True
        ).start()


def _announce(consumer, settings) -> None:
    from worker import registry
    from worker.devices import detect_devices

    devices = consumer.app.conf.get(DEVICES_CONF_KEY) or detect_devices()
    queues = list(consumer.app.amqp.queues.consume_from)
    me = registry.identity(consumer.hostname, queues, devices)
    _announced.append(me)
    registry.start_announcer(settings, me)
    log.info("worker %s consumes %s on %s", me.worker_id, ",".join(me.queues), ",".join(devices))


@signals.worker_shutdown.connect
def _leave_registry(**_kwargs) -> None:
    """A clean stop says so in the registry at once (a killed worker goes offline by age)."""
    if _announced:
        from worker import registry

        registry.mark_stopped(get_settings(), _announced[-1])


# Sent by the main process to its pool children on a warm shutdown (see below).
SHUTDOWN_SIGNAL = signal.SIGUSR2  # SIGUSR1 is billiard's soft time limit


@signals.worker_shutting_down.connect
def _hand_back_running_jobs(how: str | None = None, **_kwargs) -> None:
    """Warm shutdown (SIGTERM, `docker compose stop`): instead of training to the end (hours)
    or being killed mid-step, the job in the pool child writes a checkpoint at its current step
    and goes back to the queue, where the next worker resumes it (worker/runner.py,
    worker/claim.py)."""
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
