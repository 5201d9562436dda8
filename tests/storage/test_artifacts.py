"""The artifact store interface (jobstore/artifacts.py) on both backends: the local directory
and a real S3 API server (moto's standalone server on loopback, `s3_server`)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from pathlib import Path

import pytest

from jobstore.artifacts import (
    CorruptArtifact,
    MissingArtifact,
    StoreUnavailable,
    artifact_store,
    sha256_of,
)
from jobstore.settings import Settings
from tests.helpers import S3_CREDENTIALS


def _settings(tmp_path: Path, backend: str, s3_server=None, **extra) -> Settings:
    if backend == "local":
        return Settings(data_dir=tmp_path / "data", **extra)
    return Settings(
        data_dir=tmp_path / "data",
        artifact_store="s3",
        s3_bucket=s3_server.bucket,
        s3_endpoint_url=s3_server.url,
        s3_prefix=f"t-{uuid.uuid4().hex[:8]}/x",
        s3_timeout_s=1,
        **extra,
    )


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path, monkeypatch):
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    if request.param == "local":
        return _settings(tmp_path, "local")
    return _settings(tmp_path, "s3", request.getfixturevalue("s3_server"))


def _file(tmp_path: Path, data: bytes, name: str = "src") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_put_fetch_stream_delete(backend: Settings, tmp_path: Path):
    store = artifact_store(backend)
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one stream chunk
    src, sha = _file(tmp_path, data)
    key = "checkpoints/job1/a1/step_00000050.safetensors"
    store.put(key, src)
    assert store.exists(key)
    fetched = store.fetch(key, sha)
    assert fetched.read_bytes() == data and fetched != src
    assert b"".join(store.stream(key, sha)) == data
    store.copy(key, "checkpoints/job2/init_from.safetensors")
    assert store.fetch("checkpoints/job2/init_from.safetensors", sha).read_bytes() == data
    store.delete([key, "checkpoints/never/written"])  # a key already gone is no error
    assert not store.exists(key)
    with pytest.raises(MissingArtifact):
        store.fetch(key, sha)
    with pytest.raises(MissingArtifact):
        store.stream(key)
    with pytest.raises(MissingArtifact):
        store.copy(key, "checkpoints/job3/init_from.safetensors")


def test_sha256_mismatch_is_corrupt(backend: Settings, tmp_path: Path):
    store = artifact_store(backend)
    src, sha = _file(tmp_path, b"checkpoint bytes")
    store.put("uploads/u1.safetensors", src)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(CorruptArtifact):
        store.fetch("uploads/u1.safetensors", wrong)
    received = []
    with pytest.raises(CorruptArtifact):  # streaming: raised instead of the last chunk
        for chunk in store.stream("uploads/u1.safetensors", wrong):
            received.append(chunk)
    assert len(b"".join(received)) < len(b"checkpoint bytes")
    assert store.fetch("uploads/u1.safetensors", sha).read_bytes() == b"checkpoint bytes"


def test_corrupted_behind_the_stores_back_is_detected(backend: Settings, tmp_path, request):
    """The bytes change under the key after they were read once (disk rot, an overwrite):
    the next fetch checks again and refuses them."""
    store = artifact_store(backend)
    src, sha = _file(tmp_path, b"good bytes " * 1000)
    key = "checkpoints/job1/a1/step_00000100.safetensors"
    store.put(key, src)
    store.fetch(key, sha)
    if backend.artifact_store == "local":
        store.local_path(key).write_bytes(b"bad bytes " * 1000)
    else:
        server = request.getfixturevalue("s3_server")
        obj = f"{backend.s3_prefix}/{key}"
        server.client().put_object(Bucket=server.bucket, Key=obj, Body=b"bad bytes " * 1000)
        store.local_path(key).unlink()  # another machine: its cache does not have the file
    with pytest.raises(CorruptArtifact):
        store.fetch(key, sha)


def test_a_reader_sees_only_complete_versions(backend: Settings, tmp_path: Path):
    """Atomic visibility: while a key is rewritten with new contents again and again, every
    read of it is one whole version (never a torn mix), or the key is not there yet."""
    store = artifact_store(backend)
    versions = [os.urandom(2 * 1024 * 1024) for _ in range(2)]
    shas = {hashlib.sha256(v).hexdigest() for v in versions}
    sources = [_file(tmp_path, v, f"v{i}")[0] for i, v in enumerate(versions)]
    key = "datasets/d1.npz"
    done = threading.Event()
    seen: list[str] = []

    def read() -> None:
        while not done.is_set() and len(seen) < 200:
            try:
                seen.append(hashlib.sha256(b"".join(store.stream(key))).hexdigest())
            except MissingArtifact:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(12):
            store.put(key, sources[i % 2])
    finally:
        done.set()
        reader.join(60)
    assert not reader.is_alive()
    seen.append(hashlib.sha256(b"".join(store.stream(key))).hexdigest())
    assert set(seen) <= shas, "a read saw bytes of no complete version"


def test_local_put_in_place_copies_nothing(tmp_path: Path):
    settings = _settings(tmp_path, "local")
    store = artifact_store(settings)
    key = "checkpoints/job1/step_00000050.safetensors"
    path = store.local_path(key)
    assert path == Path(settings.storage_dir) / key
    path.parent.mkdir(parents=True)
    path.write_bytes(b"written by the trainer")
    before = path.stat().st_ino
    store.put(key, path)
    assert path.stat().st_ino == before  # the same file, not a copy
    assert store.local_path("datasets/d1.npz") == Path(settings.datasets_dir) / "d1.npz"
    assert store.presigned_url(key, 60) is None
    for bad in ("../etc/passwd", "/abs/path", "a/../../b", ""):
        with pytest.raises(MissingArtifact):
            store.local_path(bad)


def test_s3_keys_live_under_the_prefix_and_presigned_urls_work(s3_server, tmp_path, monkeypatch):
    import httpx

    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = _settings(tmp_path, "s3", s3_server)
    store = artifact_store(settings)
    src, sha = _file(tmp_path, b"presigned bytes")
    store.put("checkpoints/j/a1/step_1.safetensors", src, consume=True)
    assert not src.exists()  # handed over: it is now the cache entry
    assert (
        store.local_path("checkpoints/j/a1/step_1.safetensors").read_bytes() == b"presigned bytes"
    )
    assert s3_server.keys(settings.s3_prefix) == {
        f"{settings.s3_prefix}/checkpoints/j/a1/step_1.safetensors"
    }
    url = store.presigned_url("checkpoints/j/a1/step_1.safetensors", 60)
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"presigned bytes"


def test_s3_cache_stays_within_its_bound(s3_server, tmp_path, monkeypatch):
    import jobstore.artifacts as artifacts

    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(artifacts, "CACHE_GRACE_S", 0.0)  # every entry may go at once
    settings = _settings(tmp_path, "s3", s3_server, artifact_cache_bytes=250_000)
    store = artifact_store(settings)
    keys = []
    for i in range(5):
        src, sha = _file(tmp_path, os.urandom(100_000), f"f{i}")
        key = f"uploads/u{i}.safetensors"
        store.put(key, src)
        keys.append((key, sha))
    for key, sha in keys:  # every one still readable: a miss reads the store again
        assert sha256_of(store.fetch(key, sha)) == sha
    cached = sum(
        p.stat().st_size for p in Path(settings.artifact_cache_dir).rglob("*") if p.is_file()
    )
    assert cached <= 250_000


def test_s3_unreachable_is_store_unavailable_and_leaves_no_object(s3_server, tmp_path, monkeypatch):
    """A paused server (connections hang): the put fails as StoreUnavailable, an OSError (the
    worker's storage infrastructure class), and once the server answers again the key does not
    exist: no torn object."""
    from worker.failures import infra_cause

    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = _settings(tmp_path, "s3", s3_server)
    store = artifact_store(settings)
    src, sha = _file(tmp_path, os.urandom(6 * 1024 * 1024))
    with s3_server.paused():
        with pytest.raises(StoreUnavailable) as raised:
            store.put("checkpoints/j/a1/step_2.safetensors", src)
        with pytest.raises(StoreUnavailable):
            store.fetch("checkpoints/j/a1/step_1.safetensors", sha)
    assert isinstance(raised.value, OSError) and infra_cause(raised.value) == "storage"
    assert not store.exists("checkpoints/j/a1/step_2.safetensors")
    store.put("checkpoints/j/a1/step_2.safetensors", src)  # and it works again
    assert (
        store.fetch("checkpoints/j/a1/step_2.safetensors", sha).stat().st_size == src.stat().st_size
    )


def test_s3_store_needs_a_bucket(tmp_path: Path):
    for environment in ("development", "production"):
        with pytest.raises(ValueError, match="CELIF_S3_BUCKET"):
            Settings(
                environment=environment,
                data_dir=tmp_path,
                database_url="postgresql+psycopg://x@db/celif",
                broker_url="redis://redis:6379/0",
                artifact_store="s3",
            )
    s = Settings(data_dir=tmp_path, artifact_store="s3", s3_bucket="b-1")
    assert s.artifact_cache_dir == tmp_path / "cache" and not s.download_redirect
