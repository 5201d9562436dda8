"""The one settings object, read once from CELIF_* environment variables and `.env`.

The embedded default (no servers) and production (PostgreSQL + Redis) differ only in these
values: `database_url` and `broker_url` default to a SQLite file and Celery's filesystem
transport under `data_dir`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CELIF_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path("celif-data"), description="root of everything the service keeps")
    database_url: str | None = Field(None, description="default: SQLite file under data_dir")
    broker_url: str | None = Field(None, description="default: filesystem broker under data_dir")
    storage_dir: Path | None = Field(None, description="checkpoints; default data_dir/storage")
    mnist_dir: Path | None = Field(None, description="MNIST IDX .gz files; default data_dir/mnist")
    datasets_dir: Path | None = Field(None, description="uploaded NPZ; default storage/datasets")

    # Checkpoint retention: keep the newest N plus the best one.
    checkpoint_keep_last: int = Field(3, ge=1)
    checkpoint_keep_best: bool = True

    # Worker liveness: a running job whose heartbeat is older than stale_after_s is re-queued.
    heartbeat_interval_s: float = Field(2.0, gt=0)
    stale_after_s: float = Field(30.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0)
    max_infra_retries: int = Field(3, ge=0, description="re-queues after worker loss")
    metrics_flush_interval_s: float = Field(1.0, gt=0)
    cancel_poll_interval_s: float = Field(0.2, gt=0)
    # Intra-op threads of the training process (torch.set_num_threads); None keeps torch's
    # default (one per core). Two workers on two cores: 1 each, so they do not oversubscribe.
    torch_threads: int | None = Field(None, ge=1, le=1024)

    # Request limits.
    max_body_bytes: int = Field(32 * 1024**2, ge=1024)
    max_upload_bytes: int = Field(256 * 1024**2, ge=1024)
    max_predict_sequences: int = Field(256, ge=1)
    max_activation_bytes: int = Field(32 * 1024**3, ge=1)
    model_cache_size: int = Field(8, ge=1)
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off when empty")

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if self.environment == "production":
            # The embedded defaults (a SQLite file, a filesystem queue) would silently split a
            # multi-host deployment into islands: production must name its servers.
            missing = [
                f"CELIF_{name.upper()}"
                for name in ("database_url", "broker_url")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"CELIF_ENVIRONMENT=production needs {' and '.join(missing)} set (e.g. "
                    "postgresql+psycopg://... and redis://...); the SQLite/filesystem defaults "
                    "are for the embedded mode only"
                )
        data = self.data_dir
        if self.database_url is None:
            self.database_url = f"sqlite:///{(data / 'celif.db').resolve()}"
        if self.broker_url is None:
            self.broker_url = "filesystem://"
        if self.storage_dir is None:
            self.storage_dir = data / "storage"
        if self.mnist_dir is None:
            self.mnist_dir = data / "mnist"
        if self.datasets_dir is None:
            self.datasets_dir = self.storage_dir / "datasets"
        return self

    @property
    def embedded(self) -> bool:
        """True when running without servers (SQLite + filesystem broker)."""
        return self.broker_url.startswith("filesystem")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
