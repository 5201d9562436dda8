"""The one settings object: embedded defaults, and production refusing them."""

import pytest
from pydantic import ValidationError

from jobstore.settings import Settings


def test_embedded_defaults_live_under_the_data_dir(tmp_path):
    s = Settings(data_dir=tmp_path, _env_file=None)
    assert s.database_url == f"sqlite:///{(tmp_path / 'celif.db').resolve()}"
    assert s.embedded and s.storage_dir == tmp_path / "storage"
    assert s.datasets_dir == tmp_path / "storage" / "datasets"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, "CELIF_DATABASE_URL and CELIF_BROKER_URL"),
        ({"broker_url": "redis://127.0.0.1:6379/0"}, "CELIF_DATABASE_URL set"),
        ({"database_url": "postgresql+psycopg://x@h/db"}, "CELIF_BROKER_URL set"),
    ],
)
def test_production_refuses_the_embedded_defaults(monkeypatch, tmp_path, given, missing):
    for name in ("CELIF_DATABASE_URL", "CELIF_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match=missing):
        Settings(environment="production", data_dir=tmp_path, _env_file=None, **given)


def test_production_with_its_servers_named(tmp_path):
    s = Settings(
        environment="production",
        data_dir=tmp_path,
        database_url="postgresql+psycopg://x@h/db",
        broker_url="redis://127.0.0.1:6379/0",
        _env_file=None,
    )
    assert not s.embedded
