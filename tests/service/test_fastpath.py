"""The lean predict path (service/predict/fastpath.py) against the route it stands in for: the
same answers, JSON and NPY, byte for byte but for the timing; a cold cache, a bad token, a bad
body and another user's job answered by the route itself (same status, same body); the latency
metric still labelled with the route's template."""

from __future__ import annotations

import contextlib
import io
import json

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.predict import service as predict_service
from tests.service.conftest import ServerThread
from tests.service.predict_helpers import make_job

pytest_plugins = ["tests.service.fixtures_predict"]

NPY = "application/x-npy"


@contextlib.contextmanager
def served(settings, token: str, *, fast: bool):
    app = create_app(settings.model_copy(update={"predict_fast_path": fast}))
    with (
        ServerThread(app) as srv,
        httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client,
    ):
        yield client, predict_service.get_runtime(app.state, app.state.settings)


def _without_timing(content: bytes) -> dict:
    body = json.loads(content)
    body.pop("elapsed_ms")
    body.pop("cached")  # whether this request loaded the model
    return body


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _requests(job: str) -> list[dict]:
    x = np.random.default_rng(5).random((3, 24, 2)).round(3)
    path = f"/api/v1/jobs/{job}/predict"
    return [
        {"url": path, "json": {"inputs": x[:1].tolist()}},
        {"url": path, "json": {"inputs": x.tolist(), "return": ["probabilities", "spikes"]}},
        {"url": path, "json": {"inputs": x[:2].tolist(), "return": ["firing_rates"]}},
        {"url": path, "content": _npy(x[:2]), "headers": {"Content-Type": NPY}},
        {
            "url": path,
            "content": _npy(x),
            "headers": {"Content-Type": NPY, "Accept": NPY},
            "params": {"return": "firing_rates"},
        },
    ]


def _answers(client, runtime, requests: list[dict], *, expect_fast: bool) -> list[httpx.Response]:
    client.post(**requests[0])  # loads the model, fills the token and lookup caches
    out = []
    for req in requests:
        before = runtime.fast_path_served
        r = client.post(**req)
        assert r.status_code == 200, r.text
        assert runtime.fast_path_served - before == (1 if expect_fast else 0)
        out.append(r)
    return out


def test_the_fast_path_answers_as_the_route(psettings, db, trained, tokens):
    job = make_job(db, psettings.storage_dir, trained["adding"])
    requests = _requests(job)
    with served(psettings, tokens.alice, fast=False) as (client, runtime):
        route = _answers(client, runtime, requests, expect_fast=False)
    with served(psettings, tokens.alice, fast=True) as (client, runtime):
        fast = _answers(client, runtime, requests, expect_fast=True)
    for a, b in zip(route, fast, strict=True):
        assert a.headers["content-type"] == b.headers["content-type"]
        for header in ("x-content-type-options", "content-security-policy", "x-job-id"):
            assert a.headers.get(header) == b.headers.get(header)
        if a.headers["content-type"] == NPY:
            assert a.content == b.content
            assert a.headers["x-firing-rates"] == b.headers["x-firing-rates"]
        else:
            assert _without_timing(a.content) == _without_timing(b.content)
            # the same rendering too: only the timing's digits differ
            assert len(a.content) - len(b.content) in range(-8, 9)


def test_a_cold_cache_goes_through_the_route(psettings, db, trained, tokens):
    job = make_job(db, psettings.storage_dir, trained["adding"])
    body = {"inputs": np.zeros((1, 24, 2)).tolist()}
    with served(psettings, tokens.alice, fast=True) as (client, runtime):
        first = client.post(f"/api/v1/jobs/{job}/predict", json=body)
        assert first.status_code == 200 and runtime.fast_path_served == 0
        second = client.post(f"/api/v1/jobs/{job}/predict", json=body)
        assert second.status_code == 200 and runtime.fast_path_served == 1
        assert _without_timing(first.content) == _without_timing(second.content)


@pytest.mark.parametrize(
    "case", ["no token", "unknown token", "bad shape", "not json", "bad return", "bob's job"]
)
def test_refusals_are_the_routes_own(psettings, db, trained, tokens, case):
    job = make_job(db, psettings.storage_dir, trained["adding"])
    good = {"inputs": np.zeros((1, 24, 2)).tolist()}
    req: dict = {"url": f"/api/v1/jobs/{job}/predict", "json": good}
    if case == "no token":
        req["headers"] = {"Authorization": ""}
    elif case == "unknown token":
        req["headers"] = {"Authorization": "Bearer not-a-token"}
    elif case == "bad shape":
        req["json"] = {"inputs": np.zeros((1, 5)).tolist()}
    elif case == "not json":
        req = {"url": req["url"], "content": b"{", "headers": {"Content-Type": "application/json"}}
    elif case == "bad return":
        req["json"] = {**good, "return": ["everything"]}
    answers = []
    for fast in (False, True):
        token = tokens.bob if case == "bob's job" else tokens.alice
        with served(psettings, token, fast=fast) as (client, runtime):
            if case == "bob's job":  # bob's token cached, alice's job: not his (404)
                own = make_job(db, psettings.storage_dir, trained["adding"], owner="bob")
                assert client.post(f"/api/v1/jobs/{own}/predict", json=good).status_code == 200
            else:
                assert client.post(f"/api/v1/jobs/{job}/predict", json=good).status_code == 200
            r = client.post(**req)
            assert runtime.fast_path_served == 0
            answers.append((r.status_code, r.json(), r.headers.get("www-authenticate")))
    assert answers[0] == answers[1]
    assert answers[0][0] in (401, 404, 422)


def test_the_latency_metric_keeps_the_route_label(psettings, db, trained, tokens):
    from service.health import REQUEST_LATENCY

    job = make_job(db, psettings.storage_dir, trained["adding"])
    labels = ("POST", "/api/v1/jobs/{job_id}/predict", "200")

    def count() -> float:
        samples = REQUEST_LATENCY.collect()[0].samples
        return sum(
            s.value
            for s in samples
            if s.name.endswith("_count")
            and (s.labels["method"], s.labels["route"], s.labels["status"]) == labels
        )

    with served(psettings, tokens.alice, fast=True) as (client, runtime):
        body = {"inputs": np.zeros((1, 24, 2)).tolist()}
        client.post(f"/api/v1/jobs/{job}/predict", json=body)
        before = count()
        assert client.post(f"/api/v1/jobs/{job}/predict", json=body).status_code == 200
        assert runtime.fast_path_served == 1
        assert count() == before + 1
