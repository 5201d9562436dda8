"""The probe suite: the service attacked as a user would (another user's ids, bad bytes, huge
numbers, bombs, caps) and failed as a datacenter would (lost broker messages, storage outages).

It reuses the service suite's real fixtures (uvicorn on a free port, a fresh PostgreSQL database,
a Redis database of its own; the predict fixtures' larger body limits).
"""

from tests.service.conftest import *  # noqa: F403  (the real-server fixtures)
from tests.service.conftest import _isolated_env, _session_env  # noqa: F401
from tests.service.fixtures_predict import *  # noqa: F403
