"""Hand a committed job to the workers. Called only after the job row is committed (a worker that
gets the message always finds the row); the message carries the job id, never the spec."""

from __future__ import annotations

import logging
import threading

from service.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "celif.run_job"

_apps: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


def get_celery_app(settings: Settings | None = None):
    """The Celery app of `worker/app.py` (torch-free), imported lazily so importing the API does
    not import Celery. With explicit `settings` (an app built on its own settings, e.g. in
    tests), an app configured the same way for that broker, built once per broker."""
    from worker.app import celery_app, make_celery

    if settings is None:
        return celery_app
    key = (settings.broker_url, str(settings.broker_dir))
    with _lock:
        if key not in _apps:
            _apps[key] = make_celery(settings)
        return _apps[key]


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    get_celery_app(settings).send_task(TASK_NAME, args=[job_id])


def try_enqueue_job(job_id: str, settings: Settings | None = None) -> bool:
    """`enqueue_job`, logging instead of raising when the broker is down: the job is already
    committed as `queued`, and the worker's reaper re-sends queued jobs that nobody claimed."""
    try:
        enqueue_job(job_id, settings)
    except Exception:  # the broker client raises many kinds; the request itself succeeded
        log.exception("could not enqueue job %s; it stays queued for the reaper", job_id)
        return False
    return True
