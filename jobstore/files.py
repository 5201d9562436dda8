"""Where a job's files live (one place for the layout): artifact keys and local directories.

Keys (`jobstore.artifacts`; on the local backend, paths relative to `storage_dir`):
`checkpoints/<job id>/` a job's checkpoints (and `INIT_FILE`, the copy of an `init_from` source
the API installs at submission); on an object store one attempt's checkpoints go under
`checkpoints/<job id>/a<attempt>/`, so a stale attempt (a worker that lost its lease) can never
overwrite an object a newer attempt registered; `uploads/<id>.safetensors` uploaded
checkpoints; `datasets/<id>.npz` uploaded datasets (files under `datasets_dir`; dataset rows
hold the file name). Stored rows hold keys, the same on every backend.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import NamedTuple

from jobstore.artifacts import ArtifactStore
from jobstore.settings import Settings

INIT_FILE = "init_from.safetensors"
# Beside it, the sha256 its source row holds: the copy has no row of its own, and the worker
# checks the bytes it reads against this.
INIT_SHA256_FILE = "init_from.sha256"


class InitSource(NamedTuple):
    """An `init_from` source as stored: its artifact key and the sha256 its row holds."""

    key: str
    sha256: str


def checkpoint_prefix(settings: Settings, job_id: str, attempt: int) -> str:
    """The key prefix of one attempt's checkpoints. The local backend keeps the directory the
    trainer writes into in place (one shared directory per job, as before); an object store
    gets one prefix per attempt."""
    if settings.artifact_store == "local":
        return f"checkpoints/{job_id}"
    return f"checkpoints/{job_id}/a{attempt}"


def init_key(job_id: str) -> str:
    return f"checkpoints/{job_id}/{INIT_FILE}"


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}.safetensors"


def staging_dir(store: ArtifactStore, key: str) -> Path:
    """The local folder to stage a new artifact for `key` in (`put(..., consume=True)` from
    there is a rename: the final file on the local backend, the cache entry on s3)."""
    path = store.local_path(key).parent
    path.mkdir(parents=True, exist_ok=True)
    return path


def init_sha256_key(job_id: str) -> str:
    return f"checkpoints/{job_id}/{INIT_SHA256_FILE}"


def install_init_file(store: ArtifactStore, job_id: str, source: InitSource) -> str:
    """Copy an `init_from` source checkpoint to the new job's `INIT_FILE` key (atomically;
    server-side on an object store) with its sha256 beside it; returns the key."""
    key = init_key(job_id)
    store.copy(source.key, key)
    sha_key = init_sha256_key(job_id)
    tmp = staging_dir(store, sha_key) / f".{INIT_SHA256_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(source.sha256)
        store.put(sha_key, tmp, consume=True)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def remove_init_file(store: ArtifactStore, job_id: str) -> None:
    """Undo `install_init_file` (its job row was never committed)."""
    store.delete([init_key(job_id), init_sha256_key(job_id)])
    with contextlib.suppress(OSError):  # the local backend's now empty job directory
        store.local_path(init_key(job_id)).parent.rmdir()
