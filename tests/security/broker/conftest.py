"""Real `celif worker` processes on real Redis and PostgreSQL (the worker suite's stack)."""

import pytest
import redis
from sqlalchemy import update

from tests.worker.conftest import *  # noqa: F403
from tests.worker.conftest import Stack


@pytest.fixture(autouse=True)
def quiet_broker(stack: Stack):
    """Each test here counts the broker's messages and re-sends: start it from no live worker,
    no unfinished job and an empty broker database (earlier worker tests on the same session
    stack may leave a cancelled job's message or a queued job behind)."""
    from jobstore.db.models import Job

    for w in stack.workers:
        w.kill()
    with stack.session() as session:
        session.execute(
            update(Job).where(Job.status.in_(("queued", "running"))).values(status="cancelled")
        )
    r = redis.Redis.from_url(stack.env["CELIF_BROKER_URL"])
    keys = [k for k in r.keys() if k != b"celif-test-lock"]
    if keys:
        r.delete(*keys)
    yield
