"""Live event wake-ups on PostgreSQL: `LISTEN/NOTIFY` on one channel.

`jobstore.events` appends issue `NOTIFY celif_job_events, '<job id>'` inside the appending
transaction, so PostgreSQL delivers it at commit (and never for a rolled-back append; repeats
of one job in one transaction fold into one). `EventListener` holds one connection per API
process that LISTENs and calls the callbacks subscribed to that job. A notification only says
"read again": readers still page by `id > cursor`, so ordering and `Last-Event-ID` resume are
exactly those of the poll (jobstore/events.py). After a (re)connect every subscriber is woken,
since notifications sent while the connection was down are lost. SQLite has no such thing;
its readers poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "celif_job_events"


def notify_job_events(session: Session, job_id: str) -> None:
    """Tell listeners (at commit) that `job_id` has new events; nothing on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, job_id)))


def supports_notify(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


class EventListener:
    """A daemon thread LISTENing on CHANNEL; `subscribe(job_id, callback)` until unsubscribed.
    Callbacks run on the listener's thread and must be quick (e.g. `call_soon_threadsafe`)."""

    def __init__(self, database_url: str, *, reconnect_s: float = 1.0) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._reconnect_s = reconnect_s
        self._subs: dict[str, set[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-listener", daemon=True)
        self._thread.start()

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._subs.setdefault(job_id, set()).add(callback)

        def unsubscribe() -> None:
            with self._lock:
                subs = self._subs.get(job_id)
                if subs is not None:
                    subs.discard(callback)
                    if not subs:
                        del self._subs[job_id]

        return unsubscribe

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None:
                callbacks = [c for subs in self._subs.values() for c in subs]
            else:
                callbacks = list(self._subs.get(job_id, ()))
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a closed event loop: its stream is gone
                log.debug("event listener callback failed", exc_info=True)

    def _run(self) -> None:
        import psycopg

        delay = self._reconnect_s
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    delay = self._reconnect_s
                    self._wake(None)  # anything sent while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._wake(note.payload)
            except Exception as exc:  # lost connection: readers fall back to their slow poll
                # Logged once per outage; retried with a backoff up to 30 s.
                level = logging.WARNING if self.connected.is_set() or delay == self._reconnect_s else logging.DEBUG  # fmt: skip
                self.connected.clear()
                log.log(level, "event listener: %s; reconnecting", exc)
                self._stop.wait(delay)
                delay = min(2 * delay, 30.0)
        self.connected.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
