"""Real `celif worker` processes on real Redis and PostgreSQL (the worker suite's stack)."""

from tests.worker.conftest import *  # noqa: F403
