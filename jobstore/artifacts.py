"""Artifact storage (checkpoints, uploaded checkpoints, datasets) behind one small interface.

A key is the relative path a row stores (`checkpoints/<job>/<file>`, `uploads/<id>.safetensors`;
a dataset row's file name under `datasets/`), so rows are the same on every backend:

- `local` (the embedded default): keys are files under `storage_dir` (`datasets/...` under
  `datasets_dir`); a file already in place is not copied.
- `s3`: keys are objects under `s3_prefix` in `s3_bucket` of any S3-compatible store (AWS S3,
  MinIO, R2, GCS interop) through obstore (chosen by bench/object_store.py, docs/benchmarks.md);
  reads go through a small local cache (`artifact_cache_dir`, bounded by `artifact_cache_bytes`).

The guarantees, on both backends: `put` makes a key visible only once complete (a temp file and
`os.replace`; one PUT or a completed multipart upload), so no torn artifact is ever registered;
`fetch` checks the sha256 the row holds on every read (`CorruptArtifact` on a mismatch,
`MissingArtifact` when the key is gone); a store that cannot be reached raises
`StoreUnavailable`, an `OSError`, which the worker counts as a storage infrastructure error
(retried with backoff), never as the job's own failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Protocol

from jobstore.settings import Settings

CHUNK = 1 << 20
DATASETS = "datasets"  # the key prefix of uploaded datasets (files under datasets_dir)
# A cache file used this recently is never evicted (a predict may be about to load it, a
# trainer's checkpoint may be on its way to the store).
CACHE_GRACE_S = 60.0


class MissingArtifact(LookupError):
    """The key names nothing in the store (deleted, never written)."""


class CorruptArtifact(ValueError):
    """The key's bytes do not have the sha256 its row holds."""


class StoreUnavailable(OSError):
    """The store could not be reached or refused the request: infrastructure, retry later."""


class ArtifactStore(Protocol):
    def local_path(self, key: str) -> Path:
        """Where `key`'s file lives on this machine: the file itself (local) or its cache
        entry (s3). Write a new artifact beside it to make `put(..., consume=True)` a rename."""

    def put(self, key: str, source: Path, *, consume: bool = False) -> None:
        """Store the file `source` under `key`, visible only once complete. `consume`: the
        caller hands the file over (it is moved, not copied, where the backend can)."""

    def fetch(self, key: str, sha256: str | None) -> Path:
        """A local file with `key`'s bytes, checked against `sha256` (None: not checked)."""

    def stream(self, key: str, sha256: str | None = None) -> Iterator[bytes]:
        """`key`'s bytes in chunks; MissingArtifact before the first when it is gone. With
        `sha256`, a mismatch raises CorruptArtifact instead of the last chunk (a download is
        cut short, never completed)."""

    def exists(self, key: str) -> bool: ...

    def copy(self, source_key: str, key: str) -> None:
        """Copy an artifact to a new key (server-side on s3), visible only once complete."""

    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys; one already gone is no error."""

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A time-limited GET URL for `key`, or None where the backend has none (local)."""


def dataset_key(row_path: str) -> str:
    """The key of a dataset row's file (rows hold the file name under `datasets_dir`)."""
    return f"{DATASETS}/{row_path}"


def check_key(key: str) -> PurePosixPath:
    """A key as a relative POSIX path that stays inside the store (rows are data: never trust
    them to be well formed)."""
    path = PurePosixPath(key)
    if not key or "\x00" in key or "\\" in key or path.is_absolute() or ".." in path.parts:
        raise MissingArtifact(f"not a valid artifact key: {key!r}")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# Files this process has hashed: path -> (mtime_ns, size, sha256). A file read again unchanged
# (same mtime and size: no writer touched it; every write here is a rename of a new file) is
# not hashed again, so repeated predict lookups and samples of one artifact cost a stat.
_verified: dict[Path, tuple[int, int, str]] = {}


def _verify(key: str, path: Path, sha256: str | None) -> None:
    if sha256 is None:
        return
    st = path.stat()
    if _verified.get(path) == (st.st_mtime_ns, st.st_size, sha256):
        return
    if sha256_of(path) != sha256:
        _verified.pop(path, None)
        raise CorruptArtifact(f"artifact {key} does not match its sha256 {sha256[:12]}...")
    if len(_verified) > 10_000:
        _verified.clear()
    _verified[path] = (st.st_mtime_ns, st.st_size, sha256)


def _touch(path: Path) -> None:
    """Mark a cache entry used now (eviction goes by mtime), keeping its verified mark."""
    before = _verified.get(path)
    os.utime(path)
    if before is not None:
        _verified[path] = (path.stat().st_mtime_ns, before[1], before[2])


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy to a temp file beside `target`, fsync, then rename over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with source.open("rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- local
class LocalStore:
    """Files under `root` (`datasets/<name>` under `datasets_root`)."""

    def __init__(self, root: Path, datasets_root: Path):
        self.root = Path(root)
        self.datasets_root = Path(datasets_root)

    def local_path(self, key: str) -> Path:
        parts = check_key(key).parts
        if parts[0] == DATASETS and len(parts) > 1:
            return self.datasets_root.joinpath(*parts[1:])
        return self.root.joinpath(*parts)

    def put(self, key: str, source: Path, *, consume: bool = False) -> None:
        target = self.local_path(key)
        source = Path(source)
        if source.resolve() == target.resolve():
            return  # already in place (the trainer writes its checkpoints here atomically)
        target.parent.mkdir(parents=True, exist_ok=True)
        if consume:
            os.replace(source, target)  # callers stage beside `local_path(key)`: one filesystem
        else:
            _copy_atomic(source, target)

    def fetch(self, key: str, sha256: str | None) -> Path:
        path = self.local_path(key)
        try:
            _verify(key, path, sha256)
            if sha256 is None and not path.is_file():
                raise FileNotFoundError(path)
        except (FileNotFoundError, IsADirectoryError):
            raise MissingArtifact(f"artifact {key} is missing") from None
        # Any other OSError (storage not mounted, EIO, a path component that is not a
        # directory) means the storage is unavailable, not the artifact gone: it propagates.
        return path

    def stream(self, key: str, sha256: str | None = None) -> Iterator[bytes]:
        path = self.local_path(key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise MissingArtifact(f"artifact {key} is missing") from None
        return _verified_chunks(key, _file_chunks(f), sha256)

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def copy(self, source_key: str, key: str) -> None:
        try:
            _copy_atomic(self.local_path(source_key), self.local_path(key))
        except (FileNotFoundError, IsADirectoryError):
            raise MissingArtifact(f"artifact {source_key} is missing") from None

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.local_path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        return None


def _file_chunks(f) -> Iterator[bytes]:
    with f:
        while block := f.read(CHUNK):
            yield block


def _verified_chunks(key: str, chunks: Iterator[bytes], sha256: str | None) -> Iterator[bytes]:
    """The chunks, the last one held back until the digest is checked: a reader of corrupt
    bytes never gets them all (a download is cut short, never completed)."""
    h = hashlib.sha256()
    held = None
    for chunk in chunks:
        h.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if sha256 is not None and h.hexdigest() != sha256:
        raise CorruptArtifact(f"artifact {key} does not match its sha256 {sha256[:12]}...")
    if held is not None:
        yield held


# ----------------------------------------------------------------------------- s3
@contextmanager
def _s3_errors(key: str) -> Iterator[None]:
    """obstore's errors as ours: not found -> MissingArtifact; anything else the store or the
    network says (refused, timed out, denied) -> StoreUnavailable."""
    from obstore.exceptions import BaseError, NotFoundError

    try:
        yield
    except (NotFoundError, FileNotFoundError):  # obstore raises the builtin for a 404
        raise MissingArtifact(f"artifact {key} is missing") from None
    except StoreUnavailable:
        raise
    except (BaseError, OSError) as exc:  # OSError: TimeoutError, ConnectionError, ...
        raise StoreUnavailable(f"object store unavailable ({key}): {exc}") from exc


class S3Store:
    """Objects in an S3-compatible bucket; `local_path` is the cache entry of a key."""

    def __init__(self, settings: Settings):
        from obstore.store import S3Store as ObStore

        endpoint = settings.s3_endpoint_url
        timeout = f"{settings.s3_timeout_s:g}s"
        options = {"timeout": timeout, "connect_timeout": timeout}
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        # Credentials: obstore reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
        # AWS_SESSION_TOKEN (or the instance's role) itself; they never pass through settings.
        self.client = ObStore(
            settings.s3_bucket,
            region=settings.s3_region,
            endpoint=endpoint,
            virtual_hosted_style_request=False if endpoint else None,
            client_options=options,
            # A few quick retries here; a longer outage is the worker's backoff's business.
            retry_config={
                "max_retries": 2,
                "retry_timeout": timedelta(seconds=2 * settings.s3_timeout_s),
                "backoff": {"init_backoff": timedelta(milliseconds=100)},
            },
        )
        self.prefix = (settings.s3_prefix or "").strip("/")
        self.cache = Path(settings.artifact_cache_dir)
        self.cache_bytes = settings.artifact_cache_bytes

    def _object(self, key: str) -> str:
        rel = check_key(key).as_posix()
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def local_path(self, key: str) -> Path:
        return self.cache.joinpath(*check_key(key).parts)

    def put(self, key: str, source: Path, *, consume: bool = False) -> None:
        import obstore

        source = Path(source)
        with _s3_errors(key):
            # One PUT, or a multipart upload that becomes visible only when completed (and is
            # aborted on failure): never a torn object under the key.
            obstore.put(self.client, self._object(key), source)
        cached = self.local_path(key)
        if consume and source.resolve() != cached.resolve():
            cached.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, cached)  # the caller's copy becomes the cache entry
        self._evict(keep=cached)

    def fetch(self, key: str, sha256: str | None) -> Path:
        import obstore

        path = self.local_path(key)
        if path.is_file():
            try:
                _verify(key, path, sha256)
                _touch(path)  # recently used: kept by eviction
                return path
            except CorruptArtifact:
                path.unlink(missing_ok=True)  # a bad cache entry: read the store again
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            with _s3_errors(key):
                result = obstore.get(self.client, self._object(key))
                with tmp.open("wb") as f:
                    for chunk in result.stream(min_chunk_size=CHUNK):
                        f.write(chunk)
            _verify(key, tmp, sha256)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._evict(keep=path)
        return path

    def stream(self, key: str, sha256: str | None = None) -> Iterator[bytes]:
        import obstore

        with _s3_errors(key):
            result = obstore.get(self.client, self._object(key))
        return _verified_chunks(key, self._chunks(key, result), sha256)

    @staticmethod
    def _chunks(key: str, result) -> Iterator[bytes]:
        with _s3_errors(key):
            for chunk in result.stream(min_chunk_size=CHUNK):
                yield bytes(chunk)

    def exists(self, key: str) -> bool:
        import obstore

        try:
            with _s3_errors(key):
                obstore.head(self.client, self._object(key))
        except MissingArtifact:
            return False
        return True

    def copy(self, source_key: str, key: str) -> None:
        import obstore

        with _s3_errors(source_key):
            obstore.copy(self.client, self._object(source_key), self._object(key))

    def delete(self, keys: Iterable[str]) -> None:
        import obstore

        keys = list(keys)
        if not keys:
            return
        with _s3_errors(keys[0]):
            obstore.delete(self.client, [self._object(k) for k in keys])
        for key in keys:
            self.local_path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        import obstore

        with _s3_errors(key):
            return obstore.sign(self.client, "GET", self._object(key), timedelta(seconds=expires_s))

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used cache files until the cache fits its bound; never
        `keep`, temp files, or a file used in the last CACHE_GRACE_S seconds."""
        entries = []
        for path in self.cache.rglob("*"):
            try:
                st = path.stat()
            except OSError:
                continue  # evicted by another process meanwhile
            if path.is_file() and not path.name.startswith("."):
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        recent = time.time() - CACHE_GRACE_S
        for mtime, size, path in sorted(entries):
            if total <= self.cache_bytes:
                break
            if path == keep or mtime > recent:
                continue
            path.unlink(missing_ok=True)
            total -= size


# ----------------------------------------------------------------------------- choice
_stores: dict[tuple, ArtifactStore] = {}


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store the settings name (one per configuration and process: clients are reused)."""
    if settings.artifact_store == "local":
        return LocalStore(Path(settings.storage_dir), Path(settings.datasets_dir))
    ident = (
        settings.s3_bucket,
        settings.s3_prefix,
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_timeout_s,
        str(settings.artifact_cache_dir),
        settings.artifact_cache_bytes,
    )
    store = _stores.get(ident)
    if store is None:
        store = _stores[ident] = S3Store(settings)
    return store
