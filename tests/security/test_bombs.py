"""Decompression bombs and lying NPZ headers: refused from the headers and the zip directory
before anything is unpacked, and a large legitimate upload is checked in bounded memory (the
API's peak RSS, reset through /proc/self/clear_refs, is measured around the upload)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from tests.service.conftest import ServerThread

MB = 1024 * 1024


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _header_only(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _upload(client: httpx.Client, payload: bytes) -> httpx.Response:
    return client.post("/api/v1/datasets", files={"file": ("b.npz", payload)}, timeout=300)


def test_huge_declared_shape_is_refused_naming_the_limit(pclient, db, psettings):
    y = _npy(np.zeros(10, np.int64))
    bomb = _zip({"x.npy": _header_only((10**7, 1000, 100)), "y.npy": y})
    r = _upload(pclient, bomb)
    assert r.status_code == 422, r.text
    msg = r.json()["detail"][0]["msg"]
    assert "settings.max_dataset_bytes" in msg and str(psettings.dataset_bytes_limit) in msg


def test_member_sizes_must_agree_with_the_headers(pclient, db):
    x = _npy(np.zeros((10, 5, 2), np.float32))
    y = _npy(np.zeros(10, np.int64))
    r = _upload(pclient, _zip({"x.npy": x + b"\0" * 4096, "y.npy": y}))  # trailing payload
    assert r.status_code == 422 and "truncated or corrupt" in r.text, r.text
    r = _upload(pclient, _zip({"x.npy": x[:-8], "y.npy": y}))  # data shorter than declared
    assert r.status_code == 422 and "truncated or corrupt" in r.text, r.text


def _rss_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


@pytest.fixture(scope="module")
def roomy_server(psettings):
    settings = psettings.model_copy(
        update={"max_upload_bytes": 4 * MB, "max_dataset_bytes": 512 * MB}
    )
    with ServerThread(create_app(settings)) as srv:
        yield srv


def test_large_compressed_upload_is_checked_in_bounded_memory(roomy_server, tokens, db):
    x = np.zeros((500, 1000, 64), np.float32)  # 128 MiB unpacked, ~130 KB compressed
    x[:, 0, 0] = 1.0
    y = (np.arange(500) % 2).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    payload = buf.getvalue()
    del x, buf
    assert len(payload) < 4 * MB
    with httpx.Client(
        base_url=roomy_server.url, headers={"Authorization": f"Bearer {tokens.alice}"}
    ) as alice:
        before = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        r = _upload(alice, payload)
        peak = _rss_kib("VmHWM")
    assert r.status_code == 201, r.text
    assert r.json()["num_sequences"] == 500
    grew_mib = (peak - before) / 1024
    print(f"upload of {len(payload)} bytes unpacking to 128 MiB: peak RSS +{grew_mib:.1f} MiB")
    assert grew_mib < 48  # the old np.load of x alone took +128 MiB
