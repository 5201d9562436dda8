"""This worker's row in the registry (jobstore/workers.py): announced when the worker is ready,
refreshed by its main process every `worker_announce_interval_s` (a daemon thread beside the
reaper's), marked stopped on a clean shutdown. A refresh that fails (the database away) is
logged and tried again next interval; the worker keeps taking jobs meanwhile and shows offline
once `worker_offline_after_s` passes without one, which is what a killed worker looks like too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from jobstore import workers
from jobstore.db.session import session_scope
from jobstore.queue import QUEUES
from jobstore.settings import Settings

log = logging.getLogger(__name__)

KIND_OF_QUEUE = {name: kind for kind, name in QUEUES.items()}


@dataclass(frozen=True)
class Identity:
    worker_id: str  # the Celery node name, celif-<pid>@<host>
    host: str
    pid: int
    queues: tuple[str, ...]  # queue kinds it consumes
    devices: tuple[str, ...]


def identity(node_name: str, queue_names, devices) -> Identity:
    """Who this worker is, from Celery's node name and the broker queues it consumes."""
    kinds = tuple(sorted(KIND_OF_QUEUE.get(q, q) for q in queue_names))
    return Identity(node_name, socket.gethostname(), os.getpid(), kinds, tuple(devices))


def running_jobs() -> int:
    """Jobs this worker's pool runs now (Celery's own count of the requests it is executing)."""
    from celery.worker import state

    return len(state.active_requests)


def refresh(settings: Settings, me: Identity, *, started: bool = False) -> None:
    with session_scope(settings.database_url) as session:
        workers.announce(
            session,
            me.worker_id,
            host=me.host,
            pid=me.pid,
            queues=list(me.queues),
            devices=list(me.devices),
            running=running_jobs(),
            started=started,
        )
        if started:
            workers.forget(session, settings.worker_forget_after_s)


def mark_stopped(settings: Settings, me: Identity) -> None:
    try:
        with session_scope(settings.database_url) as session:
            workers.mark_stopped(session, me.worker_id)
    except Exception:  # the database away at shutdown: the row goes offline by itself
        log.warning("could not mark worker %s stopped", me.worker_id, exc_info=True)


def run_announcer(settings: Settings, me: Identity, stop: threading.Event) -> None:
    started = True
    while True:
        try:
            refresh(settings, me, started=started)
            started = False
        except Exception:
            log.exception("could not refresh worker %s in the registry", me.worker_id)
        if stop.wait(settings.worker_announce_interval_s):
            return


def start_announcer(settings: Settings, me: Identity) -> threading.Event:
    """Announce now and every interval in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    threading.Thread(
        target=run_announcer, args=(settings, me, stop), name="celif-announcer", daemon=True
    ).start()
    return stop
