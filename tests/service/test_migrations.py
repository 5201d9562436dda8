"""Alembic: one head, upgrade/downgrade round trip, and the migrations match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobstore.db.migrate import downgrade_database, heads, upgrade_database
from jobstore.db.models import Base

from .conftest import create_pg_database, drop_pg_database

TABLES = {"users", "api_tokens", "jobs", "job_events", "checkpoints", "datasets",
          "uploaded_checkpoints", "studies", "workers"}  # fmt: skip


def test_one_head():
    assert len(heads()) == 1


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request, tmp_path, _session_env):
    if request.param == "postgresql":
        url = create_pg_database()
        yield url
        drop_pg_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'sub' / 'm.db'}"  # the folder is created on upgrade


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_round_trip_and_models_match(fresh_url):
    upgrade_database(fresh_url)
    assert _tables(fresh_url) == TABLES
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    upgrade_database(fresh_url)  # idempotent
    downgrade_database(fresh_url, "base")
    assert _tables(fresh_url) == set()
    upgrade_database(fresh_url)
    assert _tables(fresh_url) == TABLES
