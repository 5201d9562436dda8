"""Every route of the app (read from its OpenAPI document) probed as an attacker would: without
a token, with another user's token, and with NUL bytes, out-of-range integers, overlong strings
and path traversal in every path, query and header parameter. Real uvicorn + PostgreSQL (and
SQLite: the embedded mode). No answer may be a 5xx."""

from __future__ import annotations

import base64
import io
import json
import socket
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from tests.security.routes import (
    GOOD_VALUES,
    NUL_VALUES,
    OUT_OF_RANGE,
    OVERLONG,
    TRAVERSAL,
    Operation,
    operations,
)
from tests.service.helpers import small_spec
from tests.service.predict_helpers import make_job

MISSING = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def world(pclient, db, psettings, trained):
    """Alice's finished job (with a checkpoint), her dataset and an open stream."""
    job = make_job(db, psettings.storage_dir, trained["adding"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 24, 2)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=(x[:, 0, 0] > 0).astype(np.int64))
    r = pclient.post("/api/v1/datasets", files={"file": ("d.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    stream = pclient.post(f"/api/v1/jobs/{job}/streams", json={})
    assert stream.status_code == 201, stream.text
    return {
        **GOOD_VALUES,
        "job_id": job,
        "dataset_id": r.json()["id"],
        "stream_id": stream.json()["stream_id"],
    }


def _body(op: Operation) -> dict:
    """A valid body for each operation that takes one (so a bad parameter is what is refused)."""
    if op.path.endswith("/predict"):
        return {"json": {"inputs": np.zeros((1, 24, 2)).tolist()}}
    if op.path.endswith("/chunks"):
        return {"json": {"inputs": np.zeros((1, 4, 2)).tolist()}}
    if op.path in ("/api/v1/jobs", "/api/v1/jobs:validate"):
        return {"json": small_spec()}
    if op.path == "/api/v1/datasets":
        return {"files": {"file": ("d.npz", b"not an npz")}}
    return {"json": {}} if op.has_body else {}


def _call(client: httpx.Client, op: Operation, values: dict, **override) -> httpx.Response:
    path_values = {k: quote(str(v), safe="") for k, v in values.items()}
    query, headers = {}, {}
    for name, where, _type in op.params:
        value = override.get(name, values.get(name))
        if where == "path":
            path_values[name] = quote(str(value), safe="")
        elif where == "query" and value is not None:
            query[name] = value
        elif where == "header" and name in override:
            headers[name] = override[name]
    return client.request(
        op.method,
        op.url(path_values),
        params=query,
        headers=headers,
        timeout=60,
        **_body(op),
    )


def _detail(r: httpx.Response) -> str:
    return json.dumps(r.json().get("detail"))


def test_every_api_route_needs_a_token(papp, pserver, world):
    ops = [op for op in operations(papp) if op.needs_token]
    assert len(ops) >= 20  # the enumeration found the app's routes
    with httpx.Client(base_url=pserver.url) as anon:
        for op in ops:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "x"}):
                anon.headers = headers
                r = _call(anon, op, world)
                assert r.status_code == 401, f"{op} with {headers}: {r.status_code} {r.text}"
                assert r.headers["www-authenticate"] == "Bearer"


def test_another_users_ids_look_missing(papp, pbob, world):
    """Bob on alice's job / dataset / stream gets exactly what a missing id gets."""
    owned = ("job_id", "dataset_id", "stream_id")
    for op in operations(papp):
        names = [n for n, where, _ in op.params if where == "path" and n in owned]
        if not names:
            continue
        theirs = _call(pbob, op, world)
        missing_values = {**world, **{n: MISSING for n in names}}
        nothing = _call(pbob, op, missing_values)
        assert theirs.status_code == nothing.status_code == 404, f"{op}: {theirs.text}"
        text = _detail(theirs)
        for n in names:
            text = text.replace(world[n], MISSING)
        assert text == _detail(nothing), op
    listed = pbob.get("/api/v1/jobs").json()["items"]
    assert listed == []
    assert pbob.get("/api/v1/datasets").json()["items"] == []


@pytest.mark.parametrize(
    "kind,values",
    [("nul", NUL_VALUES), ("range", OUT_OF_RANGE), ("long", OVERLONG), ("traversal", TRAVERSAL)],
)
def test_bad_values_in_every_parameter_never_5xx(papp, pclient, world, kind, values):
    probed = 0
    for op in operations(papp):
        for name, where, _type in op.params:
            if where == "header":
                continue  # below, over a raw socket (HTTP clients refuse NUL in headers)
            for value in values:
                r = _call(pclient, op, world, **{name: value})
                probed += 1
                where_ = f"{op} {where} {name}={value[:40]!r}"
                assert r.status_code < 500, f"{where_}: {r.status_code} {r.text[:300]}"
                if kind == "nul":
                    assert r.status_code in (404, 422), f"{where_}: {r.status_code} {r.text}"
                    assert "NUL" in r.text or r.status_code == 404, r.text
                if kind == "range" and _type == "integer":
                    assert r.status_code == 422, f"{where_}: {r.status_code} {r.text}"
    assert probed > 30


def _raw_request(port: int, head: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_nul_in_headers_never_5xx(pserver, world, tokens):
    job = world["job_id"]
    for name in (b"Last-Event-ID", b"Idempotency-Key", b"Authorization"):
        value = b"Bearer " + tokens.alice.encode() if name == b"Authorization" else b"1"
        head = (
            f"GET /api/v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\n".encode()
            + (
                b""
                if name == b"Authorization"
                else f"Authorization: Bearer {tokens.alice}\r\n".encode()
            )
            + name
            + b": "
            + value
            + b"\x00x\r\nConnection: close\r\n\r\n"
        )
        status = _raw_request(pserver.port, head)
        assert 400 <= status < 500, (name, status)


def test_nul_in_bodies_is_422_naming_the_field(pclient, world):
    r = pclient.post("/api/v1/jobs", json=small_spec(name="a\x00b"))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "name"]
    assert "NUL" in r.json()["detail"][0]["msg"]
    spec = small_spec(task={"name": "adding", "params": {"seq_len": 20, "x\x00": 1}})
    r = pclient.post("/api/v1/jobs:validate", json=spec)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "task", "params"]
    r = pclient.post(
        "/api/v1/datasets",
        files={"file": ("d.npz", b"PK")},
        data={"name": "n\x00"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"], r.text
    job = world["job_id"]
    for path, body in (
        (
            f"/api/v1/jobs/{job}/predict",
            {"inputs": np.zeros((1, 24, 2)).tolist(), "checkpoint": "best\x00"},
        ),
        (f"/api/v1/jobs/{job}/streams", {"checkpoint": "\x00"}),
    ):
        r = pclient.post(path, json=body)
        assert r.status_code == 404, r.text
    cursor = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "a\x00"]).encode())
    r = pclient.get("/api/v1/jobs", params={"cursor": cursor.decode()})
    assert r.status_code == 400 and "cursor" in r.text


def test_sse_resume_point_out_of_range_is_refused_before_the_stream(pclient, world):
    job = world["job_id"]
    r = pclient.get(f"/api/v1/jobs/{job}/events", params={"after": 2**63})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text
    r = pclient.get(f"/api/v1/jobs/{job}/events", headers={"Last-Event-ID": str(2**63)})
    assert r.status_code == 400 and "Last-Event-ID" in r.text, r.text
    r = pclient.get(f"/api/v1/jobs/{job}/metrics", params={"after": 2**63})
    assert r.status_code == 422, r.text
    # The largest bigint is fine: an empty page / a stream with nothing after it.
    r = pclient.get(f"/api/v1/jobs/{job}/metrics", params={"after": 2**63 - 1})
    assert r.status_code == 200 and r.json()["items"] == []
