"""Uploaded files (datasets, checkpoints): streamed to a temp file beside their final place under
a size limit, inspected, then put into the artifact store with their row, in the request's unit
of work (the local backend: a rename into place; s3: one upload, the file kept as the cache).

A refused upload leaves nothing behind: the temp file is removed when the `staged_upload` block
ends, and an artifact stored is deleted again if the unit of work rolls back.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from jobstore.artifacts import ArtifactStore
from jobstore.db.session import after_rollback
from service.errors import PayloadTooLarge

CHUNK = 1024 * 1024


@dataclass
class StagedUpload:
    path: Path  # the temp file
    size: int
    sha256: str

    def store(self, session: Session, store: ArtifactStore, key: str) -> None:
        """Put the file under `key` once its row (added by the caller) flushes."""
        session.flush()
        store.put(key, self.path, consume=True)  # StoreUnavailable: a 503 (service/errors.py)
        after_rollback(session, lambda: store.delete([key]))


def copy_limited(src: BinaryIO, dst: BinaryIO, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the upload is over the limit of {limit} bytes (settings.max_upload_bytes)"
            )
        digest.update(chunk)
        dst.write(chunk)
    return size, digest.hexdigest()


@contextmanager
def staged_upload(upload: BinaryIO, folder: Path, limit: int) -> Iterator[StagedUpload]:
    tmp = folder / f".upload-{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            size, sha256 = copy_limited(upload, fh, limit)
            fh.flush()
            os.fsync(fh.fileno())
        yield StagedUpload(tmp, size, sha256)
    finally:
        tmp.unlink(missing_ok=True)
