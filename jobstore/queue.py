"""The job queue: the broker configuration the API and the workers share, and its producer.

Hand a committed job to the workers. Called only after the job row is committed (a worker that
gets the message always finds the row); the message carries the job id, never the spec.

Jobs go to a queue per device kind (DESIGN.md §6): `training.device` cuda -> `gpu`, cpu -> `cpu`,
auto -> `any` (`job_queue`, the one place that decides). A worker consumes the kinds it can run
(`celif worker --queues`; by default `gpu,any` with a CUDA device, `cpu,any` without), so an
auto job runs on whichever worker is free first. Every send (after submit, a re-queue, the
reaper's re-send, a study release) goes through `enqueue_job`, which reads the job's spec."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celif_core.catalog import DEVICES
from jobstore.settings import Settings, get_settings

if TYPE_CHECKING:  # Celery is imported when the first app is built: importing the API stays light
    from celery import Celery

log = logging.getLogger(__name__)

TASK_NAME = "celif.run_job"
QUEUE = "celif"  # the `any` queue (the one queue there was before device queues)

# Queue kind (what `celif worker --queues` and JobOut.queue name) -> the broker's queue name.
QUEUES: dict[str, str] = {"gpu": "celif.gpu", "cpu": "celif.cpu", "any": QUEUE}
# training.device -> queue kind.
DEVICE_QUEUES: dict[str, str] = {"cuda": "gpu", "cpu": "cpu", "auto": "any"}
assert set(DEVICE_QUEUES) == set(DEVICES), "every device of the spec has a queue"


def job_queue(spec: Mapping[str, Any] | None) -> str:
    """The queue kind of a job: from its (validated, defaults filled) spec's `training.device`."""
    device = ((spec or {}).get("training") or {}).get("device") or "auto"
    try:
        return DEVICE_QUEUES[device]
    except KeyError:
        raise ValueError(
            f"training.device {device!r} has no queue; expected one of {sorted(DEVICE_QUEUES)}"
        ) from None


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


def make_celery(settings: Settings | None = None, *, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app for the job queue. The workers pass their task modules as `include`; a
    producer (the API, the reaper) needs none: it sends by task name."""
    from celery import Celery
    from kombu import Exchange, Queue

    settings = settings or get_settings()
    broker = settings.broker_url
    if broker in ("filesystem://", "filesystem:"):
        broker = "filesystem://localhost//"  # same transport; spares kombu's "no hostname" warning
    app = Celery("celif", broker=broker, include=list(include))
    app.conf.update(
        # Each queue on its own direct exchange of the same name: what Celery makes for a
        # default queue, so a message sent before device queues existed still lands in `celif`.
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES.values()],
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


_producers: dict[tuple[str, str], Celery] = {}
_lock = threading.Lock()


def producer_app(settings: Settings | None = None) -> Celery:
    """The Celery app that sends job messages for these settings' broker, built once per broker
    (an app built on its own settings, e.g. in tests, gets its own). It registers no tasks:
    sending is by name, so the API and the reaper never import the worker's task code."""
    settings = settings or get_settings()
    key = (settings.broker_url, str(settings.broker_dir))
    with _lock:
        if key not in _producers:
            _producers[key] = make_celery(settings)
        return _producers[key]


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    """Send the job's message to the queue of its device (its spec read from the database, so
    every caller sends where the submit did). A job that no longer exists is not sent."""
    settings = settings or get_settings()
    kind = queue_of_job(job_id, settings)
    if kind is None:
        log.warning("job %s not found; no message sent", job_id)
        return
    producer_app(settings).send_task(TASK_NAME, args=[job_id], queue=QUEUES[kind])


def queue_of_job(job_id: str, settings: Settings | None = None) -> str | None:
    """The queue kind of a stored job (None when there is no such job)."""
    from sqlalchemy import select

    from jobstore.db.models import Job
    from jobstore.db.session import session_scope

    settings = settings or get_settings()
    with session_scope(settings.database_url) as session:
        spec = session.scalar(select(Job.spec).where(Job.id == job_id))
    return None if spec is None else job_queue(spec)


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
    """Messages waiting in the job queues, all kinds together (Redis list lengths, files of the
    filesystem broker).

    A queue nobody has declared yet, or an empty Redis list (Redis deletes empty lists), is 0:
    the declare is not passive, which creates nothing on Redis but its binding. Raises when the
    broker cannot be reached."""
    app = producer_app(settings)
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        return sum(int(channel.queue_declare(queue=name).message_count) for name in QUEUES.values())


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
    app = producer_app(settings)
    raw: list[bytes | str] = []
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        if conn.transport_cls in ("redis", "rediss") or hasattr(channel, "unacked_key"):
            client = channel.client
            for queue in QUEUES.values():
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
        else:  # kombu's filesystem transport: one file per waiting message, `<id>.<queue>.msg`
            folder = Path(channel.data_folder_in)
            names = {f"{queue}.msg" for queue in QUEUES.values()}
            for path in folder.iterdir():
                if path.name.partition(".")[2] not in names:  # the transport's own rule
                    continue
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
