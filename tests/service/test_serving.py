"""Serving under load: the predict pool's bounded queue (503 + Retry-After), NPY bodies and
answers (same answers as JSON, same limits and 422s), cached predict lookups within their TTL."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.predict import service as predict_service
from tests.service.conftest import ServerThread
from tests.service.predict_helpers import PREDICT_LIMIT, make_job

pytest_plugins = ["tests.service.fixtures_predict"]

NPY = "application/x-npy"


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _load(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def _post_npy(client, job_id, array, *, accept="application/json", params=None):
    return client.post(
        f"/api/v1/jobs/{job_id}/predict",
        content=_npy(array) if isinstance(array, np.ndarray) else array,
        headers={"Content-Type": NPY, "Accept": accept},
        params=params,
    )


def test_npy_and_json_give_the_same_answers(pclient, db, psettings, trained):
    mnist = make_job(db, psettings.storage_dir, trained["seq_mnist"])
    x = np.random.default_rng(1).random((3, 784), dtype=np.float32)
    js = pclient.post(f"/api/v1/jobs/{mnist}/predict", json={"inputs": x.tolist()})
    assert js.status_code == 200, js.text
    # NPY in, JSON out: the very same body (but the timing).
    nj = _post_npy(pclient, mnist, x)
    assert nj.status_code == 200, nj.text
    strip = lambda b: {k: v for k, v in b.items() if k not in ("elapsed_ms", "cached")}  # noqa: E731
    assert strip(nj.json()) == strip(js.json())
    # NPY in and out ([N, T, 1] and float64 accepted too): the probabilities as one array.
    nn = _post_npy(pclient, mnist, x[:, :, None].astype(np.float64), accept=NPY)
    assert nn.status_code == 200, nn.text
    assert nn.headers["content-type"] == NPY
    probs = _load(nn.content)
    assert probs.shape == (3, 10)
    assert probs.tolist() == [p["probabilities"] for p in js.json()["predictions"]]
    assert nn.headers["X-Checkpoint-SHA256"] == js.json()["checkpoint"]["sha256"]
    rates = [float(v) for v in nn.headers["X-Firing-Rates"].split(",")]
    assert rates == js.json()["firing_rates"]
    # JSON in, NPY out; regression (adding: F=2).
    adding = make_job(db, psettings.storage_dir, trained["adding"])
    xa = np.random.default_rng(2).random((2, 24, 2)).astype(np.float32)
    ja = pclient.post(f"/api/v1/jobs/{adding}/predict", json={"inputs": xa.tolist()})
    na = pclient.post(
        f"/api/v1/jobs/{adding}/predict", json={"inputs": xa.tolist()}, headers={"Accept": NPY}
    )
    assert ja.status_code == na.status_code == 200
    values = _load(na.content)
    assert values[:, 0].tolist() == [p["value"] for p in ja.json()["predictions"]]
    # Query parameters carry the other fields of an NPY request.
    r = _post_npy(pclient, mnist, x[:1], params={"return": "spikes", "spikes_layer": 1})
    assert r.status_code == 200 and r.json()["spikes"]["layer"] == 1


@pytest.mark.parametrize(
    "case",
    ["garbage", "pickle", "strings", "shape", "truncated", "too_many", "nan", "bad_query"],
)
def test_npy_bodies_get_the_same_refusals(pclient, db, psettings, trained, case):
    job = make_job(db, psettings.storage_dir, trained["seq_mnist"])
    good = np.zeros((1, 784), np.float32)
    body = {
        "garbage": b"\x93NUMPY not really",
        "pickle": _npy(np.array([{"a": 1}], dtype=object)),
        "strings": _npy(np.array([["x"] * 784])),
        "shape": _npy(np.zeros((1, 783), np.float32)),
        "truncated": _npy(good)[:-8],
        "too_many": _npy(np.zeros((PREDICT_LIMIT + 1, 784), np.float32)),
        "nan": _npy(np.full((1, 784), np.nan, np.float32)),
        "bad_query": _npy(good),
    }[case]
    params = {"spikes_layer": "-1"} if case == "bad_query" else None
    r = _post_npy(pclient, job, body, params=params)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"][0] == "body"
    if case in ("shape", "too_many"):
        assert "[N, T=784, F=1]" in err["msg"]


def test_npy_value_limit_is_checked_on_the_header(pserver, papp, db, psettings, trained, tokens):
    job = make_job(db, psettings.storage_dir, trained["adding"])
    n = psettings.max_predict_values // 48 + 1
    header_only = _npy(np.zeros((n, 24, 2), np.float32))
    with httpx.Client(
        base_url=pserver.url, headers={"Authorization": f"Bearer {tokens.alice}"}
    ) as c:
        r = _post_npy(c, job, header_only)
    assert r.status_code == 422
    assert "settings.max_predict_values" in r.json()["detail"][0]["msg"]


def test_a_full_predict_queue_is_503_with_retry_after(db, psettings, trained, tokens):
    settings = psettings.model_copy(update={"predict_workers": 1, "predict_queue_size": 0})
    app = create_app(settings)
    runtime = predict_service.get_runtime(app.state, settings)
    job = make_job(db, settings.storage_dir, trained["adding"])
    x = {"inputs": np.zeros((1, 24, 2)).tolist()}
    release = threading.Event()
    with (
        ServerThread(app) as srv,
        httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=60
        ) as c,
    ):
        assert c.post(f"/api/v1/jobs/{job}/predict", json=x).status_code == 200
        stream = c.post(f"/api/v1/jobs/{job}/streams", json={}).json()["stream_id"]
        chunk = f"/api/v1/jobs/{job}/streams/{stream}/chunks"
        busy = runtime.pool.submit(release.wait, 60)  # the only worker, and no queue
        try:
            r = c.post(f"/api/v1/jobs/{job}/predict", json=x)
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) == settings.predict_retry_after_s
            assert "settings.predict_queue_size" in r.json()["detail"]
            # A stream's chunk runs its forward on the same pool: refused the same way.
            r = c.post(chunk, json={"inputs": np.zeros((1, 4, 2)).tolist()})
            assert r.status_code == 503, r.text
            assert int(r.headers["Retry-After"]) == settings.predict_retry_after_s
        finally:
            release.set()
        busy.result(10)
        assert c.post(f"/api/v1/jobs/{job}/predict", json=x).status_code == 200
        assert c.post(chunk, json={"inputs": np.zeros((1, 4, 2)).tolist()}).status_code == 200
    runtime.pool.shutdown()


def test_a_new_best_checkpoint_takes_effect_within_the_lookup_ttl(pclient, db, psettings, trained):
    from sqlalchemy import update

    from jobstore.db.models import Checkpoint
    from jobstore.db.session import session_scope

    job = make_job(db, psettings.storage_dir, trained["adding"])
    x = {"inputs": np.zeros((1, 24, 2)).tolist()}
    before = pclient.post(f"/api/v1/jobs/{job}/predict", json=x).json()["checkpoint"]
    # The job's best checkpoint row changes (as a newer best one would be registered).
    with session_scope(db) as s:
        s.execute(
            update(Checkpoint).where(Checkpoint.job_id == job).values(step=before["step"] + 1)
        )
    changed_at = time.monotonic()
    ttl = psettings.predict_lookup_ttl_s
    while True:
        sent = time.monotonic()
        got = pclient.post(f"/api/v1/jobs/{job}/predict", json=x).json()["checkpoint"]
        if got["step"] == before["step"] + 1:
            break
        assert got == before
        assert sent < changed_at + ttl, "the old checkpoint was still used past the TTL"
        time.sleep(0.05)


@pytest.mark.parametrize("synapses", ["dense", "event"])
@pytest.mark.parametrize("task", ["seq_mnist", "adding", "copy_memory"])
def test_batched_equals_unbatched_and_a_bad_request_fails_alone(
    pclient, db, psettings, trained, tokens, task, synapses
):
    """Concurrent requests gathered into one forward get exactly the answers each gets alone
    (on an unbatched server), with GEMM or event-driven synapses; the invalid one among them
    gets its own 422."""
    settings = psettings.model_copy(
        update={
            "predict_batching": "on",
            "predict_batch_wait_ms": 300.0,
            "predict_workers": 1,
            "predict_synapses": synapses,
        }
    )
    unbatched = settings.model_copy(update={"predict_batching": "off"})
    app = create_app(settings)
    runtime = predict_service.get_runtime(app.state, settings)
    job = make_job(db, settings.storage_dir, trained[task])
    shape = {"seq_mnist": (784,), "adding": (24, 2), "copy_memory": None}[task]
    if shape is None:  # copy memory: T = delay + 20, F = 1... read it from a sample
        sample = pclient.get(f"/api/v1/jobs/{job}/samples", params={"n": 1}).json()
        shape = tuple(sample["shape"][1:])
    rng = np.random.default_rng(3)
    bodies = [
        {"inputs": rng.random((n, *shape)).round(3).tolist(), "return": ret}
        for n, ret in [
            (1, ["probabilities", "firing_rates"]),
            (2, ["firing_rates", "spikes"]),
            (1, []),
            (3, ["probabilities", "firing_rates", "spikes"]),
        ]
    ]
    bad = {"inputs": rng.random((1, 5)).tolist()}  # wrong T / F
    with (
        ServerThread(create_app(unbatched)) as one,
        httpx.Client(
            base_url=one.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=60
        ) as c,
    ):
        alone = [c.post(f"/api/v1/jobs/{job}/predict", json=b) for b in bodies]
    assert all(r.status_code == 200 for r in alone), [r.text for r in alone]
    with (
        ServerThread(app) as srv,
        httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=60
        ) as c,
    ):
        c.post(f"/api/v1/jobs/{job}/predict", json=bodies[0])  # load the model
        before = runtime.batcher.batches
        results: dict[int, httpx.Response] = {}

        def send(i: int, body: dict) -> None:
            results[i] = c.post(f"/api/v1/jobs/{job}/predict", json=body)

        threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate([*bodies, bad])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        ran = runtime.batcher.batches - before
    assert results[len(bodies)].status_code == 422
    for i, r in enumerate(alone):
        got = results[i]
        assert got.status_code == 200, got.text
        strip = lambda b: {k: v for k, v in b.items() if k not in ("elapsed_ms", "cached")}  # noqa: E731
        assert strip(got.json()) == strip(r.json()), i
    assert ran < len(bodies)  # some were gathered into one forward
    model = runtime.cache.peek(alone[0].json()["checkpoint"]["sha256"]).model
    layers = len(model.hidden)
    assert model.event_synapses == (frozenset(range(1, layers)) if synapses == "event" else set())
    runtime.pool.shutdown()


def test_an_undecodable_json_body_is_a_422(pclient, db, psettings, trained):
    job = make_job(db, psettings.storage_dir, trained["adding"])
    r = pclient.post(
        f"/api/v1/jobs/{job}/predict",
        content=b"g\x11~\xea$\x8b]_M\x84{",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body"]
