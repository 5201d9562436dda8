"""Hand a committed job to the workers. Called only after the job row is committed (a worker that
gets the message always finds the row); the message carries the job id, never the spec."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path

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


def queue_depth(settings: Settings | None = None) -> int:
    """Messages waiting in the job queue (Redis list length, files of the filesystem broker).

    A queue nobody has declared yet, or an empty Redis list (Redis deletes empty lists), is 0:
    the declare is not passive, which creates nothing on Redis but its binding. Raises when the
    broker cannot be reached."""
    app = get_celery_app(settings)
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        ok = conn.default_channel.queue_declare(queue=app.conf.task_default_queue)
        return int(ok.message_count)


def job_ids_in_broker(
    settings: Settings | None = None, *, delivered_within_s: float | None = None
) -> set[str]:
    """Ids of the jobs whose `celif.run_job` message the broker holds: waiting in the queue, or
    delivered to a worker and not yet acknowledged (Redis keeps those in its `unacked` hash;
    with late acks a running job's message stays there until the job ends). The reaper re-sends
    queued jobs that are in neither. Raises when the broker cannot be reached.

    With `delivered_within_s`, a delivered message counts only if it was delivered that
    recently: a queued job whose message a worker took long ago without claiming the job was
    taken by a worker that died (Redis gives such messages back only after the 12 h visibility
    timeout).

    The filesystem broker has no unacked store: a message a worker has taken but not yet
    claimed is in no file for that moment (a re-send then is a duplicate the claim ignores)."""
    app = get_celery_app(settings)
    queue = app.conf.task_default_queue
    raw: list[bytes | str] = []
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        if conn.transport_cls in ("redis", "rediss") or hasattr(channel, "unacked_key"):
            client = channel.client
            for pri in channel.priority_steps:
                raw.extend(client.lrange(channel._q_for_pri(queue, pri), 0, -1))
            now = time.time()
            delivered = dict(client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
            for tag, held in client.hgetall(channel.unacked_key).items():
                age = now - delivered.get(tag, now)
                if delivered_within_s is not None and age > delivered_within_s:
                    continue
                try:
                    raw.append(json.dumps(json.loads(held)[0]))
                except (ValueError, TypeError, IndexError):
                    continue
        else:  # kombu's filesystem transport: one file per waiting message
            folder = Path(channel.data_folder_in)
            for path in folder.glob(f"*.{queue}.msg"):
                try:
                    raw.append(path.read_bytes())
                except OSError:  # taken by a worker meanwhile
                    continue
    ids = set()
    for item in raw:
        job_id = _job_id_of(item)
        if job_id is not None:
            ids.add(job_id)
    return ids


def _job_id_of(raw: bytes | str) -> str | None:
    """The job id a serialized Celery message (protocol 2, JSON body) carries, if it is ours."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != TASK_NAME:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
