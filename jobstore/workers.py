"""The worker registry: which worker consumes which queue, and when each was last seen.

Every worker's main process upserts its row every `worker_announce_interval_s` (worker/app.py,
beside the reaper thread) and marks it stopped on a clean shutdown; a row not refreshed for
`worker_offline_after_s` is offline (a killed worker, a lost host). The API reads the registry
to tell a queued job's owner what it waits for (`waiting_for`: "a GPU worker: none is online
(last seen 12 min ago)"), and `celif worker --ping` reads it to say whether this host's worker
lives. Torch-free and Celery-free: the API and the CLI import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from jobstore.db.models import Worker, utcnow

# What a queue kind waits for, in words.
KIND_WORKER = {"gpu": "a GPU worker", "cpu": "a CPU worker", "any": "a worker"}


def announce(
    session: Session,
    worker_id: str,
    *,
    host: str,
    pid: int,
    queues: list[str],
    devices: list[str],
    running: int,
    started: bool = False,
) -> None:
    """Insert or refresh this worker's row (only its own process writes it: no race).
    `started`: a (re)start, which resets `started_at` and clears `stopped_at`."""
    now = utcnow()
    values = {"host": host, "pid": pid, "queues": queues, "devices": devices, "running": running}
    if started:
        values |= {"started_at": now, "stopped_at": None}
    done = session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(last_seen=now, **values)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount == 0:
        session.add(Worker(id=worker_id, **{"started_at": now, **values, "last_seen": now}))
    session.flush()


def mark_stopped(session: Session, worker_id: str) -> None:
    now = utcnow()
    session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=now, last_seen=now, running=0)
        .execution_options(synchronize_session=False)
    )


def forget(session: Session, older_than_s: float) -> int:
    """Delete the rows not seen for `older_than_s` (workers long gone); returns how many."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return session.execute(delete(Worker).where(Worker.last_seen < cutoff)).rowcount


@dataclass(frozen=True)
class WorkerState:
    id: str
    host: str
    queues: tuple[str, ...]
    devices: tuple[str, ...]
    running: int
    started_at: datetime
    last_seen: datetime
    online: bool


@dataclass(frozen=True)
class Census:
    """The registry as read once (one query per request, however many jobs it describes)."""

    workers: tuple[WorkerState, ...]
    now: datetime

    def online(self, kind: str) -> list[WorkerState]:
        return [w for w in self.workers if w.online and kind in w.queues]

    def waiting_for(self, kind: str) -> tuple[str, bool]:
        """(what a queued job of this queue kind waits for, whether an online worker consumes
        its queue)."""
        who = KIND_WORKER.get(kind, f"a worker of queue {kind!r}")
        online = self.online(kind)
        if online:
            return f"{who} ({len(online)} online)", True
        seen = [w.last_seen for w in self.workers if kind in w.queues]
        if not seen:
            return f"{who}: none is online (none has been seen yet)", False
        return f"{who}: none is online (last seen {ago(self.now - max(seen))})", False


def census(session: Session, offline_after_s: float) -> Census:
    now = utcnow()
    cutoff = now - timedelta(seconds=offline_after_s)
    rows = session.scalars(select(Worker).order_by(Worker.host, Worker.id)).all()
    workers = tuple(
        WorkerState(
            id=r.id,
            host=r.host,
            queues=tuple(r.queues or ()),
            devices=tuple(r.devices or ()),
            running=int(r.running or 0),
            started_at=_aware(r.started_at),
            last_seen=_aware(r.last_seen),
            online=r.stopped_at is None and _aware(r.last_seen) >= cutoff,
        )
        for r in rows
    )
    return Census(workers, now)


def ago(delta: timedelta) -> str:
    """A duration for people: '40 s ago', '12 min ago', '3 h ago', '2 days ago'."""
    s = max(0, int(delta.total_seconds()))
    if s < 120:
        return f"{s} s ago"
    if s < 2 * 3600:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
