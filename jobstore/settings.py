"""The one settings object, read once from CELIF_* environment variables and `.env`.

The embedded default (no servers) and production (PostgreSQL + Redis) differ only in these
values: `database_url` and `broker_url` default to a SQLite file and Celery's filesystem
transport under `data_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from celif_core.spec import SpecLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CELIF_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(Path("celif-data"), description="root of everything the service keeps")
    database_url: str | None = Field(None, description="default: SQLite file under data_dir")
    broker_url: str | None = Field(None, description="default: filesystem broker under data_dir")
    storage_dir: Path | None = Field(None, description="checkpoints; default data_dir/storage")
    mnist_dir: Path | None = Field(None, description="MNIST IDX .gz files; default data_dir/mnist")
    datasets_dir: Path | None = Field(None, description="uploaded NPZ; default storage/datasets")

    # Artifact storage (jobstore/artifacts.py): checkpoints, uploaded checkpoints and datasets.
    # "local": files under storage_dir / datasets_dir (one host, or a shared volume); "s3": an
    # S3-compatible object store (AWS S3, MinIO, R2, GCS interop). Credentials come from the
    # usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables (or the
    # host's role), never from a CELIF_ setting, so they are never logged with the settings.
    artifact_store: Literal["local", "s3"] = "local"
    s3_bucket: str | None = Field(None, description="the bucket (required with s3)")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. celif/prod")
    s3_endpoint_url: str | None = Field(None, description="non-AWS stores: http(s)://host:port")
    s3_region: str = "us-east-1"
    s3_timeout_s: float = Field(60.0, gt=0, description="one request (a multipart part)")
    # The worker's and the API's local copies of store artifacts (resume, init_from, datasets,
    # predict); least recently used files are evicted past artifact_cache_bytes.
    artifact_cache_dir: Path | None = Field(None, description="default data_dir/cache")
    artifact_cache_bytes: int = Field(2 * 1024**3, ge=0)
    # GET .../checkpoints/{ref} answers 307 to a presigned URL of the store (s3 only) instead
    # of streaming the bytes through the API; the URL is valid for presigned_url_ttl_s.
    download_redirect: bool = False
    presigned_url_ttl_s: int = Field(300, ge=1, le=7 * 24 * 3600)

    # Checkpoint retention: keep the newest N plus the best one.
    checkpoint_keep_last: int = Field(3, ge=1)
    checkpoint_keep_best: bool = True

    # Worker liveness: a running job whose heartbeat is older than stale_after_s is re-queued.
    heartbeat_interval_s: float = Field(2.0, gt=0)
    stale_after_s: float = Field(30.0, gt=0)
    reaper_interval_s: float = Field(5.0, gt=0)
    max_infra_retries: int = Field(3, ge=0, description="re-queues after worker loss")
    # Worker registry (docs/api.md "Queues and workers"): every worker's main process refreshes
    # its row in `workers` every worker_announce_interval_s; one not seen for
    # worker_offline_after_s is offline (a queued job whose queue no online worker consumes says
    # so in `waiting_for`; `celif worker --ping` fails); rows unseen for worker_forget_after_s
    # are deleted.
    worker_announce_interval_s: float = Field(10.0, gt=0)
    worker_offline_after_s: float = Field(60.0, gt=0)
    worker_forget_after_s: float = Field(7 * 24 * 3600.0, gt=0)
    max_study_trials: int = Field(256, ge=1, description="trials per study (all its searches)")
    # A job's infrastructure error (storage or database I/O, a lost device) is retried after an
    # exponential backoff with jitter: base * 2**k seconds (at most infra_retry_max_delay_s),
    # times a random factor in [0.5, 1]; the job fails once its first such error is older than
    # infra_retry_budget_s. Retries are counted per cause (storage, database, device, other).
    infra_retry_base_s: float = Field(1.0, gt=0)
    infra_retry_max_delay_s: float = Field(30.0, gt=0)
    infra_retry_budget_s: float = Field(300.0, gt=0)
    # A job queued this long since its last send whose message the broker does not hold is
    # re-sent (a lost message); a duplicate would be a harmless no-op (the claim guards it).
    resend_queued_after_s: float = Field(10.0, gt=0)
    # A delivered, unacknowledged message counts as held this long: the worker's fresh pool child
    # imports the training stack before it claims (seconds on a busy machine); an older
    # unclaimed delivery was taken by a worker that died, and its job is re-sent.
    claim_within_s: float = Field(60.0, gt=0)
    metrics_flush_interval_s: float = Field(1.0, gt=0)
    cancel_poll_interval_s: float = Field(0.2, gt=0)
    # Intra-op threads of the training process (torch.set_num_threads); None keeps torch's
    # default (one per core). Two workers on two cores: 1 each, so they do not oversubscribe.
    torch_threads: int | None = Field(None, ge=1, le=1024)

    # Request limits.
    max_body_bytes: int = Field(32 * 1024**2, ge=1024)
    max_upload_bytes: int = Field(256 * 1024**2, ge=1024)
    max_dataset_bytes: int | None = Field(
        None, ge=1, description="unpacked arrays of an NPZ upload; default 4 x max_upload_bytes"
    )
    max_predict_sequences: int = Field(256, ge=1)
    # Numbers in one predict / stream-chunk body, counted before the JSON is parsed: bounds the
    # memory parsing takes (~32 bytes per number as Python objects; 2**21 -> ~70 MB).
    max_predict_values: int = Field(2**21, ge=1)
    # Job size limits (celif_core.spec.SpecLimits): a spec over one is a 422 naming the field.
    max_activation_bytes: int = Field(32 * 1024**3, ge=1, description="one training/eval step")
    max_parameters: int = Field(1_000_000_000, ge=1, description="network incl. the TE table")
    max_eval_set_bytes: int = Field(8 * 1024**3, ge=1, description="one generated val/test set")
    model_cache_size: int = Field(8, ge=1)
    # Open streaming-predict sessions per API process: in all, and per user (one user at the
    # cap gets 429 and nobody else does).
    max_streams: int = Field(64, ge=1)
    max_streams_per_user: int = Field(8, ge=1)
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off when empty")

    # Serving (docs/predict.md "Serving under load"). Forward passes run on a dedicated pool of
    # `predict_workers` threads, torch using `predict_torch_threads` intra-op threads (process
    # wide); None derives both from the cores this process may use (workers x threads = cores),
    # so concurrent requests never oversubscribe the CPU.
    predict_workers: int | None = Field(None, ge=1, le=256)
    predict_torch_threads: int | None = Field(None, ge=1, le=1024)
    # API processes serving on this host (`python -m service.predict.launch --processes N` sets
    # it for each): the derived pool sizes divide the cores among them. One process cannot use
    # two cores for /predict (the GIL: its event loop and forwards take turns), so a host with
    # several cores serves prediction traffic from several processes (docs/predict.md).
    api_processes: int = Field(1, ge=1, le=256)
    # Requests waiting for a worker beyond the running ones; one more is a 503 + Retry-After.
    predict_queue_size: int = Field(32, ge=0)
    predict_retry_after_s: int = Field(1, ge=1)
    # Dynamic batching: requests for the same checkpoint and step count that arrive while
    # every predict worker is busy are gathered into the next forward (a lone request waits
    # for nothing), up to predict_max_batch_steps sequences x steps. "auto": per model, where
    # it measured cheaper per sequence when the model was loaded, up to the best batch size
    # measured (on the CPU small models gain most; docs/predict.md). predict_batch_wait_ms > 0
    # also holds each batch that long after its first request, even with a worker free.
    predict_batching: Literal["auto", "on", "off"] = "auto"
    predict_batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    predict_max_batch_steps: int = Field(64 * 784, ge=1)
    # Synaptic currents of hidden layers fed by spikes, on the CPU: "event" adds one weight row
    # per input spike (celif_core.kernels.synapses) instead of a dense GEMM, "dense" never,
    # "auto" per layer where it measured faster when the model was loaded (docs/predict.md).
    # Answers agree with the GEMM's to float rounding (another summation order).
    predict_synapses: Literal["auto", "event", "dense"] = "auto"
    # /predict answered by a lean ASGI path when the token and the job's lookups are cached
    # (service/predict/fastpath.py: the route's answer, less Python per request); off: the route.
    predict_fast_path: bool = True
    # Live job events (SSE): on PostgreSQL a stream wakes on LISTEN/NOTIFY (the appends notify
    # at commit) instead of polling; off, or on SQLite, it polls every 0.5 s.
    sse_listen_notify: bool = True
    # Bounded staleness of the per-process caches: a token revoked (or a new best checkpoint
    # registered) takes effect on this process within this many seconds; 0 turns caching off.
    auth_cache_ttl_s: float = Field(2.0, ge=0, le=60)
    predict_lookup_ttl_s: float = Field(2.0, ge=0, le=60)

    @model_validator(mode="after")
    def _check_worker_registry(self) -> Settings:
        if self.worker_offline_after_s <= self.worker_announce_interval_s:
            raise ValueError(
                f"worker_offline_after_s ({self.worker_offline_after_s:g}) must exceed "
                f"worker_announce_interval_s ({self.worker_announce_interval_s:g}): a live "
                "worker would count as offline between two refreshes"
            )
        return self

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
        if self.artifact_cache_dir is None:
            self.artifact_cache_dir = data / "cache"
        if self.artifact_store == "s3" and not self.s3_bucket:
            # (any environment: an s3 store without a bucket has nowhere to write)
            raise ValueError(
                "CELIF_ARTIFACT_STORE=s3 needs CELIF_S3_BUCKET set (the bucket name, e.g. "
                "celif-artifacts); for a non-AWS store also CELIF_S3_ENDPOINT_URL "
                "(e.g. http://minio:9000)"
            )
        return self

    @property
    def embedded(self) -> bool:
        """True when running without servers (SQLite + filesystem broker)."""
        return self.broker_url.startswith("filesystem")

    @property
    def dataset_bytes_limit(self) -> int:
        """The arrays of an uploaded NPZ may take this much memory once unpacked (compressed
        NPZ members can unpack to far more than the upload)."""
        return self.max_dataset_bytes or 4 * self.max_upload_bytes

    @property
    def spec_limits(self) -> SpecLimits:
        return SpecLimits(
            max_activation_bytes=self.max_activation_bytes,
            max_parameters=self.max_parameters,
            max_eval_set_bytes=self.max_eval_set_bytes,
        )

    @property
    def predict_parallelism(self) -> tuple[int, int]:
        """(workers, torch threads per worker) of this process's predict pool: unset, workers x
        threads = the cores this process may use, divided among `api_processes`."""
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = max(1, (cores or os.cpu_count() or 1) // self.api_processes)
        workers = self.predict_workers or max(1, cores // (self.predict_torch_threads or 1))
        threads = self.predict_torch_threads or max(1, cores // workers)
        return workers, threads

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings: read from the environment / `.env` on first use, or the ones
    `configure_settings` made."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def configure_settings(**overrides: Any) -> Settings:
    """Make the process's settings the environment's with `overrides` on top (e.g. a command's
    `--data-dir`), without writing the environment; `get_settings()` returns them from now on."""
    global _current
    _current = Settings(**overrides)
    return _current


def reset_settings() -> None:
    """Forget the process's settings: the next `get_settings()` reads the environment again."""
    global _current
    _current = None
